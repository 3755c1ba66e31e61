#include "greet.h"

int main(void) {
    greet("treeseed");
    return 0;
}
