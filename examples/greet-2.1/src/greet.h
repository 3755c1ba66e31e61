#pragma once
#include <stdio.h>

static inline void greet(const char *who) { printf("hello, %s\n", who); }
