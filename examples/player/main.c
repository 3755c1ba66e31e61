#include <stdio.h>
#include "zlib.h"
#ifdef HAVE_MP3
#include "lame.h"
#endif

int main(void) {
    printf("player built with zlib %s", ZLIB_VERSION);
#ifdef HAVE_MP3
    printf(" and lame %s (MP3 on)\n", LAME_VERSION);
#else
    printf(", MP3 off\n");
#endif
    return 0;
}
