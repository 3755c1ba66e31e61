#include <stdio.h>

int main(void) {
    puts("hello from a package fetched by content hash");
    return 0;
}
