/* A stand-in for zlib: enough for the example player to compile against. */
#pragma once
#define ZLIB_VERSION "1.3"
