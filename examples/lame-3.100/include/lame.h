/* A stand-in for LAME, the MP3 encoder: only a build that enables MP3 needs it. */
#pragma once
#define LAME_VERSION "3.100"
