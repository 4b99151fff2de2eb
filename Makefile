# binduq -- build, test and benchmark.
#
#   make               libbinduq.a, libbinduq.so, the Lua module binduq/core.so, binduq-lua
#   make test          the whole suite (C unit tests under ASan+UBSan, busted specs, integration
#                      tests against a real redis-server started on a free loopback port)
#   make test-unit     the tests that need no server (C tests under ASan+UBSan, busted's
#                      in-memory specs, lint), in under a minute once built
#   make lint          luacheck and cppcheck, both clean
#   make bench         the benchmark against a throwaway redis-server
#   make bench-peers   binduq beside BullMQ, bee-queue, redis-py and Celery (optional; npm, Debian)
#   make fuzz          the libFuzzer targets (clang, ASan+UBSan) in build/fuzz/; tests/fuzz/run
#                      runs each on its corpus for FUZZ_SECONDS (default 20)
#   make install       PREFIX=/usr/local DESTDIR=   (with lib/pkgconfig/binduq.pc for PREFIX)
#
# Knobs: CC, CXX, CFLAGS, LDFLAGS, PREFIX, DESTDIR, LUA_INCDIR, LUA_LIB, WERROR=1, SANITIZER=.

CC        ?= cc
CXX       ?= c++
PREFIX    ?= /usr/local
DESTDIR   ?=
LUA_INCDIR ?= /usr/include/lua5.4
LUA_LIB   ?= -llua5.4
WERROR    ?= 1
SANITIZER ?=
BUILD     ?= build
VERSION   := $(shell sed -n 's/^\#define BQ_VERSION_STRING "\(.*\)"/\1/p' src/binduq.h)

WARN = -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
       -Wwrite-strings -Wformat=2 -Wundef
ifeq ($(WERROR),1)
WARN += -Werror
endif
CFLAGS   ?= -O2 -g
# The one C++ file (src/lua/l_json.cpp, simdjson) gets the same flags where C++ has them.
CXX_WARN = $(filter-out -Wstrict-prototypes -Wmissing-prototypes,$(WARN))
ALL_CXXFLAGS = -std=c++17 -fPIC -fvisibility=hidden -fno-exceptions -fno-rtti $(CXX_WARN) \
               -I$(LUA_INCDIR) $(CFLAGS)
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -DBQ_BUILDING -fPIC -fvisibility=hidden $(WARN) \
             -I$(LUA_INCDIR) $(CFLAGS)
ifneq ($(SANITIZER),)
ALL_CFLAGS += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
ALL_CXXFLAGS += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZER)
endif
# libpq and libmicrohttpd are opened when first needed (src/core/dl.h), not linked; the tests
# link libpq themselves (test_pg talks to PostgreSQL directly).
LIBS = -lhiredis -lpthread -lm -ldl
TEST_LIBS = $(LIBS) -lpq -lcrypto
# Only the Lua binding decodes tasks with simdjson (C++: it brings libstdc++).
JSON_LIBS = -lsimdjson -lstdc++

LIB_SRC = $(wildcard src/core/*.c src/net/*.c src/broker/*.c src/storage/*.c src/engine/*.c)
LUA_SRC = $(wildcard src/lua/*.c)
LUA_CXX_SRC = $(wildcard src/lua/*.cpp)
HOST_SRC = src/host/main.c
LIB_OBJ = $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LUA_OBJ = $(LUA_SRC:%.c=$(BUILD)/obj/%.o) $(LUA_CXX_SRC:%.cpp=$(BUILD)/obj/%.o)
HOST_OBJ = $(HOST_SRC:%.c=$(BUILD)/obj/%.o)
HEADERS = $(sort $(wildcard src/*.h src/*/*.h) src/broker/scripts.h src/storage/rscripts.h)

C_TESTS = $(patsubst tests/c/%.c,$(BUILD)/tests/%,$(wildcard tests/c/test_*.c))

.PHONY: all test test-unit test-c lint lint-luacheck lint-cppcheck check bench bench-peers fuzz install uninstall clean rock
all: $(BUILD)/libbinduq.a $(BUILD)/libbinduq.so $(BUILD)/binduq/core.so $(BUILD)/binduq-lua \
     $(BUILD)/examples/schedule_c

V ?= 0
ifeq ($(V),0)
Q = @
SAY = @printf '  %-6s %s\n'
else
Q =
SAY = @true
endif

# Each object depends on the headers it includes (-MMD -MP writes them to a .d file beside it).
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(SAY) CC $<
	$(Q)$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(SAY) CXX $<
	$(Q)$(CXX) $(ALL_CXXFLAGS) -MMD -MP -c $< -o $@

-include $(wildcard $(BUILD)/obj/src/*/*.d $(BUILD)/obj/src/*.d)

# libbinduq: the C runtime (no Lua inside: the binding lives in the Lua module).
$(BUILD)/libbinduq.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(SAY) AR $@
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/libbinduq.so: $(LIB_OBJ)
	$(SAY) LD $@
	$(Q)$(CC) -shared -Wl,-soname,libbinduq.so.0 $(LDFLAGS) -o $@ $^ $(LIBS)

# The Lua module must not link liblua: the interpreter that loads it provides the Lua API.
$(BUILD)/binduq/core.so: $(LIB_OBJ) $(LUA_OBJ)
	@mkdir -p $(dir $@)
	$(SAY) LD $@
	$(Q)$(CC) -shared $(LDFLAGS) -o $@ $^ $(LIBS) $(JSON_LIBS)

# The Lua binding's objects as one archive: the fuzz targets link it with the library.
$(BUILD)/libbinduq_lua.a: $(LUA_OBJ)
	$(SAY) AR $@
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/binduq-lua: $(HOST_OBJ) $(LUA_OBJ) $(LIB_OBJ)
	$(SAY) LD $@
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LUA_LIB) $(LIBS) $(JSON_LIBS)

$(BUILD)/examples/schedule_c: examples/schedule.c $(BUILD)/libbinduq.a src/binduq.h
	@mkdir -p $(dir $@)
	$(SAY) CC $<
	$(Q)$(CC) -std=c11 $(WARN) $(CFLAGS) -Isrc -o $@ $< $(BUILD)/libbinduq.a $(LDFLAGS) $(LIBS)

# C tests, built three ways: with AddressSanitizer+UBSan (what `make test` runs first), with
# ThreadSanitizer, and plain for valgrind. Each sanitizer gets its own library build tree.
ASAN_BUILD = $(BUILD)/asan
TSAN_BUILD = $(BUILD)/tsan
TEST_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) -O1 -g -fno-omit-frame-pointer -Isrc
TSAN_TESTS = $(patsubst tests/c/%.c,$(BUILD)/tests-tsan/%,$(wildcard tests/c/test_*.c))
VG_TESTS = $(patsubst tests/c/%.c,$(BUILD)/tests-vg/%,$(wildcard tests/c/test_*.c))

$(ASAN_BUILD)/libbinduq.a: $(LIB_SRC) $(HEADERS)
	@$(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) SANITIZER=address,undefined $@

$(TSAN_BUILD)/libbinduq.a: $(LIB_SRC) $(HEADERS)
	@$(MAKE) --no-print-directory BUILD=$(TSAN_BUILD) SANITIZER=thread $@

$(BUILD)/tests/%: tests/c/%.c tests/c/check.h $(ASAN_BUILD)/libbinduq.a
	@mkdir -p $(dir $@)
	$(SAY) CC $@
	$(Q)$(CC) $(TEST_CFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all -o $@ $< \
	    $(ASAN_BUILD)/libbinduq.a $(TEST_LIBS)

$(BUILD)/tests-tsan/%: tests/c/%.c tests/c/check.h $(TSAN_BUILD)/libbinduq.a
	@mkdir -p $(dir $@)
	$(SAY) CC $@
	$(Q)$(CC) $(TEST_CFLAGS) -fsanitize=thread -o $@ $< $(TSAN_BUILD)/libbinduq.a $(TEST_LIBS)

$(BUILD)/tests-vg/%: tests/c/%.c tests/c/check.h $(BUILD)/libbinduq.a
	@mkdir -p $(dir $@)
	$(SAY) CC $@
	$(Q)$(CC) $(TEST_CFLAGS) -o $@ $< $(BUILD)/libbinduq.a $(TEST_LIBS)

test-c: $(C_TESTS)
	@for t in $(C_TESTS); do $$t || exit 1; done

test: all $(C_TESTS) $(TSAN_TESTS) $(VG_TESTS)
	@tests/run

test-unit: all $(C_TESTS)
	@tests/run --unit

check: test

# Lint: luacheck on every Lua file (.luacheckrc), cppcheck on every C file. Suppressed
# cppcheck findings, each for a reason:
#   varFuncNullUB   NULL ends the argument lists of bq_log and bq_conn_callv; glibc defines
#                   NULL as ((void *)0), a pointer, which is what the callee reads.
#   memleak in the bench program: it exits at once on the failures cppcheck follows.
LUA_LINTED = lua examples tests src/broker/embed.lua
CPPCHECK_FLAGS = --quiet --std=c11 -D_GNU_SOURCE -DBQ_BUILDING -Isrc \
    --enable=warning,portability,performance --inline-suppr --error-exitcode=1 \
    --suppress=varFuncNullUB --suppress=memleak:tests/bench/cbench.c \
    --template='{file}:{line}: {severity}: {message} [{id}]'

lint: lint-luacheck lint-cppcheck

lint-luacheck:
	$(SAY) LUACHECK "$(LUA_LINTED)"
	$(Q)luacheck --quiet --no-color --formatter plain $(LUA_LINTED)

lint-cppcheck:
	$(SAY) CPPCHECK "src tests examples"
	$(Q)cppcheck $(CPPCHECK_FLAGS) -j2 src tests/c tests/fuzz tests/bench examples

# Fuzzing: each tests/fuzz/fuzz_<name>.c is one libFuzzer target, linked against the library
# and the Lua binding built by clang with AddressSanitizer+UBSan in their own tree; its seeds
# are tests/fuzz/corpus/<name>/.
FUZZ_CC  ?= clang
FUZZ_CXX ?= clang++
FUZZ_BUILD = $(BUILD)/fuzz
FUZZ_SAN = address,undefined
FUZZ_TARGETS = $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(wildcard tests/fuzz/fuzz_*.c))

$(FUZZ_BUILD)/libbinduq.a $(FUZZ_BUILD)/libbinduq_lua.a &: $(LIB_SRC) $(LUA_SRC) $(LUA_CXX_SRC) $(HEADERS)
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) CXX=$(FUZZ_CXX) \
	    SANITIZER=$(FUZZ_SAN) CFLAGS="-O1 -g -fsanitize=fuzzer-no-link" \
	    $(FUZZ_BUILD)/libbinduq.a $(FUZZ_BUILD)/libbinduq_lua.a

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_BUILD)/libbinduq_lua.a \
                      $(FUZZ_BUILD)/libbinduq.a
	$(SAY) CC $@
	$(Q)$(FUZZ_CC) -std=c11 -D_GNU_SOURCE $(WARN) -O1 -g -Isrc -I$(LUA_INCDIR) -DFUZZ_ROOT=\"$(CURDIR)\" \
	    -fsanitize=fuzzer,$(FUZZ_SAN) -fno-sanitize-recover=all -c $< -o $@.o
	$(Q)$(FUZZ_CXX) -fsanitize=fuzzer,$(FUZZ_SAN) -o $@ $@.o $(FUZZ_BUILD)/libbinduq_lua.a \
	    $(FUZZ_BUILD)/libbinduq.a $(LUA_LIB) $(LIBS) $(JSON_LIBS)

fuzz: $(FUZZ_TARGETS)

bench: all $(BUILD)/bench/cbench $(BUILD)/bench/httpload $(BUILD)/bench/modelsrv
	@tests/bench/run

# Optional, not in CI: binduq beside BullMQ, bee-queue and a redis-py loop (from npm and
# Debian's archive, into $(BUILD)/peers).
bench-peers: all $(BUILD)/bench/modelsrv
	@env -u REDIS_URL $(BUILD)/binduq-lua tests/bench/peers.lua

$(BUILD)/bench/cbench: tests/bench/cbench.c $(BUILD)/libbinduq.a src/binduq.h
	@mkdir -p $(dir $@)
	$(SAY) CC $<
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) -Isrc -o $@ $< $(BUILD)/libbinduq.a $(LDFLAGS) $(LIBS)

$(BUILD)/bench/httpload: tests/bench/httpload.c
	@mkdir -p $(dir $@)
	$(SAY) CC $<
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) -o $@ $< -lpthread

$(BUILD)/bench/modelsrv: tests/bench/modelsrv.c
	@mkdir -p $(dir $@)
	$(SAY) CC $<
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) -o $@ $< -lmicrohttpd -lpthread

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include \
	    $(DESTDIR)$(PREFIX)/lib/lua/5.4/binduq $(DESTDIR)$(PREFIX)/share/lua/5.4/binduq/lifecycle
	install -m 755 $(BUILD)/binduq-lua $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/libbinduq.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libbinduq.so $(DESTDIR)$(PREFIX)/lib/libbinduq.so.0
	ln -sf libbinduq.so.0 $(DESTDIR)$(PREFIX)/lib/libbinduq.so
	install -m 644 src/binduq.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(BUILD)/binduq/core.so $(DESTDIR)$(PREFIX)/lib/lua/5.4/binduq/
	install -m 644 lua/binduq/*.lua $(DESTDIR)$(PREFIX)/share/lua/5.4/binduq/
	install -m 644 lua/binduq/lifecycle/*.lua $(DESTDIR)$(PREFIX)/share/lua/5.4/binduq/lifecycle/
	install -d $(DESTDIR)$(PREFIX)/share/lua/5.4/binduq/dashboard
	install -m 644 lua/binduq/dashboard/*.lua $(DESTDIR)$(PREFIX)/share/lua/5.4/binduq/dashboard/
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' binduq.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/binduq.pc
	chmod 644 $(DESTDIR)$(PREFIX)/lib/pkgconfig/binduq.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/binduq-lua $(DESTDIR)$(PREFIX)/lib/libbinduq.* \
	    $(DESTDIR)$(PREFIX)/include/binduq.h $(DESTDIR)$(PREFIX)/lib/pkgconfig/binduq.pc
	rm -rf $(DESTDIR)$(PREFIX)/lib/lua/5.4/binduq $(DESTDIR)$(PREFIX)/share/lua/5.4/binduq

clean:
	rm -rf $(BUILD)

# The Redis scripts, one readable file each, embedded as C strings (the output is committed).
src/broker/scripts.h: src/broker/embed.lua $(sort $(wildcard lua/binduq/redis/*.lua))
	$(SAY) GEN $@
	$(Q)lua5.4 src/broker/embed.lua $(sort $(wildcard lua/binduq/redis/*.lua)) > $@.tmp && mv $@.tmp $@

# The Redis storage's scripts (src/storage/rstore.c), the same way.
src/storage/rscripts.h: src/broker/embed.lua $(sort $(wildcard lua/binduq/rstore/*.lua))
	$(SAY) GEN $@
	$(Q)lua5.4 src/broker/embed.lua --guard BINDUQ_RSCRIPTS_H \
	    $(sort $(wildcard lua/binduq/rstore/*.lua)) > $@.tmp && mv $@.tmp $@
