/*
 * env.h -- the process environment as the configuration reads it: binduq's own names, the
 * names Bindu's settings read (pydantic-settings matches them in any case), and a .env file.
 *
 * A .env file holds NAME=VALUE lines, as python-dotenv (which Bindu's settings use) reads
 * them: blank lines and lines starting with '#' are skipped; "export " before a name is
 * allowed; a value may be 'single-quoted' (taken as it is), "double-quoted" (with \n, \t,
 * \", \\ escapes) or bare (up to a " #" comment, trimmed). No ${VAR} expansion. A line that
 * is none of these is skipped and counted.
 */
#ifndef BINDUQ_ENV_H
#define BINDUQ_ENV_H

#include "../binduq.h"

#include <stddef.h>

/* getenv(name) if set and not empty, else NULL. */
const char *bq_env(const char *name);

/* The variable `name` (upper case) in any case, as Bindu's settings match it: the exact name
 * first, then the first other spelling in the environment. Set and not empty, else NULL. */
const char *bq_env_any_case(const char *name);

#define BQ_DOTENV_NAME_MAX 128

/* Parses text[0..len) as a .env file: calls cb for each NAME=VALUE (value owned by the
 * callee, which frees it with bq_free), returns how many lines were skipped as malformed.
 * Every size is bounded: names over 127 bytes and values over 64 KiB count as malformed. */
int bq_dotenv_parse(const char *text, size_t len,
                    void (*cb)(void *ud, const char *name, char *value), void *ud);

/* Reads the .env file at `path` (NULL: BINDUQ_ENV_FILE, else ".env" in the working
 * directory) and sets each variable the environment does not set already (the environment
 * wins, as in Bindu). A missing file is not an error. *loaded and *skipped (either may be
 * NULL) count the variables set and the malformed lines. setenv is not thread-safe: call it
 * once, before the process starts threads that read the environment (the Lua module does,
 * as it loads: core.load_dotenv).*/
bq_status bq_dotenv_load(const char *path, int *loaded, int *skipped, bq_err *err);

#endif
