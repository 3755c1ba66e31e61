#!/bin/sh
# Build the example: cc -o hello src/hello.c
exec "${CC:-cc}" -o hello src/hello.c
