/*
 * escape.h -- one rule for showing text that came from outside: queue messages, task ids,
 * worker names, error messages a handler wrote. Such text reaches an operator's terminal
 * (the admin commands of binduq-lua) and log lines (read by people and by log shippers), and
 * on both a single byte can do harm: ESC starts a terminal command (OSC 52 writes the
 * clipboard, CSI 2K erases a line, CSI 2J clears the screen), U+009B is the same CSI for
 * terminals that honour C1 controls, and a newline or carriage return forges a line. So
 * every such string is written through bq_escape, which leaves printable text alone and
 * writes everything else as an escape:
 *
 *   - C0 controls (0x00-0x1f) and DEL (0x7f): \n \r \t, others \xNN (text) or \u00NN (JSON);
 *   - C1 controls (U+0080..U+009F, the bytes C2 80..C2 9F): \u{NN} (text) or \u00NN (JSON);
 *   - each byte that is not part of well-formed UTF-8 (no overlong forms, no surrogates,
 *     nothing past U+10FFFF): \xNN (text) or \ufffd, the replacement character (JSON).
 *
 * The text forms are lossless: an escaped string can be read back to the exact bytes in the
 * quoted mode, which also escapes '"' and '\'. The display mode (the admin commands) leaves
 * '\' alone, so JSON bodies read as they are; --json gives the exact content.
 */
#ifndef BINDUQ_ESCAPE_H
#define BINDUQ_ESCAPE_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum bq_escape_mode {
    BQ_ESC_DISPLAY = 0, /* one line of a terminal: the rules above, '"' and '\' copied */
    BQ_ESC_QUOTED,      /* the inside of a logfmt quoted value: DISPLAY plus \" and \\ */
    BQ_ESC_JSON,        /* the inside of a JSON string: \" \\ \n \r \t, \u00NN, \ufffd */
    BQ_ESC_JSON_TEXT,   /* a JSON text made safe to print: controls and C1 as \u00NN and
                         * invalid bytes as \ufffd; quotes and backslashes copied, so valid
                         * JSON stays valid JSON with the same value (where it was UTF-8) */
} bq_escape_mode;

/* Appends s[0..len) to b, escaped by `mode`. The output is well-formed UTF-8 with no byte
 * below 0x20, no 0x7f and no C1 control. Out of memory: b's sticky flag (buf.h). */
void bq_escape(bq_buf *b, const char *s, size_t len, bq_escape_mode mode);

/* True if s[0..len) is written unchanged by bq_escape in DISPLAY mode. */
bool bq_escape_clean(const char *s, size_t len);

/* The length (1..4) of the well-formed UTF-8 sequence that starts s[0..len), with its code
 * point in *cp; 0 if none starts there (len == 0, a stray byte, an overlong form, a
 * surrogate, past U+10FFFF or cut short). */
size_t bq_utf8_next(const char *s, size_t len, uint32_t *cp);

#endif
