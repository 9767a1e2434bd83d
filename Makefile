# kvbus - one plain Makefile.
#
#   make            build build/kvbusd (optimised, with debug symbols)
#   make run        install what is missing, build, start kvbusd on defaults
#   make test       install what is missing, build, run unit + e2e tests,
#                   then the same again under ASan+UBSan
#   make asan       the sanitizer build in build-asan/
#   make bench      benchmarks against redis-benchmark in the same run
#   make format-check   clang-format over the C sources
#   make fuzz       libFuzzer harnesses (clang, build-fuzz/): replays the kept
#                   inputs, then fuzzes each target FUZZ_SECONDS (60) seconds;
#                   `make test` runs it for FUZZ_TEST_SECONDS (15) each
#
# User CFLAGS are appended to ours, never replace them.

CC       ?= cc
BUILD    ?= build
MODE     ?= release
PKGS      = libuv jansson inih libxxhash libssl libcrypto hiredis libpq rdkafka \
            libmongoc-1.0
LIBS_EXTRA = -lhttp_parser -lwslay -lm

ifeq ($(MODE),asan)
  OPT = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
        -fno-sanitize-recover=undefined
  LDOPT = -fsanitize=address,undefined
else ifeq ($(MODE),fuzz)
  OPT = -O1 -g -fsanitize=fuzzer-no-link,address,undefined \
        -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDOPT = -fsanitize=fuzzer,address,undefined
else
  OPT = -O2 -g
  LDOPT =
endif

WARN     = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
           -Wno-missing-field-initializers
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) $(OPT) -I. \
             $(shell pkg-config --cflags $(PKGS)) $(CFLAGS)
ALL_LDFLAGS = $(LDOPT) $(LDFLAGS)
LDLIBS_ALL = $(shell pkg-config --libs $(PKGS)) $(LIBS_EXTRA) $(LDLIBS)

KV_SRC   = kvstore/kvstore.c kvstore/kv_value.c kvstore/kv_cursor.c
MEM_SRC  = backends/memory/mem_kv.c
# Network backends: every .c in their folders (tests/unit/test_<name>.c
# links them with the kvstore core).
NET_SRC  = $(wildcard backends/redis/*.c backends/postgres/*.c \
                      backends/kafka/*.c backends/mongodb/*.c)
PS_SRC   = pubsub/ps_bus.c pubsub/ps_queue.c pubsub/ps_memory.c \
           pubsub/ps_origins.c
PS_LINK ?= $(PS_SRC)
SRV_CONFIG_SRC = server/srv_config.c server/srv_config_keys.c
SRV_LIB_SRC = $(SRV_CONFIG_SRC) server/srv_request.c server/srv_log.c \
              server/srv_auth.c
# The application without its main(): kvbusd and the fuzz harnesses link it.
SRV_APP_SRC = server/srv_app.c server/srv_http.c server/srv_response.c \
              server/srv_conn.c server/srv_phase.c server/srv_server.c \
              server/srv_routes.c server/srv_metrics.c server/srv_ws.c \
              server/srv_guard.c server/srv_tls.c
SRV_SRC  = server/main.c $(SRV_APP_SRC)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))

KVBUSD   = $(BUILD)/kvbusd
UNIT_TESTS = $(BUILD)/tests/test_kvstore $(BUILD)/tests/test_memory \
             $(BUILD)/tests/test_config $(BUILD)/tests/test_request \
             $(BUILD)/tests/test_pubsub $(BUILD)/tests/test_postgres \
             $(BUILD)/tests/test_redis $(BUILD)/tests/test_kafka \
             $(BUILD)/tests/test_auth $(BUILD)/tests/test_tls \
             $(BUILD)/tests/test_mongodb

.PHONY: all run test test-unit test-fixtures test-e2e asan bench deps clean format-check \
        fuzz fuzz-build fuzz-bins fuzz-regress

all: $(KVBUSD)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

# The dashboard's files, compiled into kvbusd as one generated C file.
DASH_ASSETS = server/dashboard/index.html server/dashboard/dashboard.css \
              server/dashboard/dashboard.js
DASH_GEN    = $(BUILD)/gen/dashboard_assets.c

$(DASH_GEN): $(DASH_ASSETS) server/dashboard/gen_assets.py
	@mkdir -p $(dir $@)
	python3 server/dashboard/gen_assets.py $@ $(DASH_ASSETS)

$(DASH_GEN:.c=.o): $(DASH_GEN) server/dashboard/srv_dashboard.h
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(KVBUSD): $(call obj,$(KV_SRC) $(MEM_SRC) $(NET_SRC) $(PS_LINK) $(SRV_LIB_SRC) $(SRV_SRC)) \
           $(DASH_GEN:.c=.o)
	$(CC) $(ALL_LDFLAGS) $^ -o $@ $(LDLIBS_ALL)

# One cmocka binary per module, linking only that module and what it needs.
$(BUILD)/tests/test_kvstore: $(call obj,tests/unit/test_kvstore.c $(KV_SRC) $(MEM_SRC))
$(BUILD)/tests/test_memory: $(call obj,tests/unit/test_memory.c $(KV_SRC) $(MEM_SRC))
$(BUILD)/tests/test_config: $(call obj,tests/unit/test_config.c $(SRV_CONFIG_SRC) server/srv_log.c $(KV_SRC))
$(BUILD)/tests/test_request: $(call obj,tests/unit/test_request.c server/srv_request.c $(KV_SRC))
$(BUILD)/tests/test_auth: $(call obj,tests/unit/test_auth.c server/srv_auth.c)
$(BUILD)/tests/test_pubsub: $(call obj,tests/unit/test_pubsub.c $(PS_SRC) kvstore/kv_value.c)
$(BUILD)/tests/test_postgres: $(call obj,tests/unit/test_postgres.c $(KV_SRC) $(wildcard backends/postgres/*.c))
$(BUILD)/tests/test_redis: $(call obj,tests/unit/test_redis.c $(KV_SRC) $(wildcard backends/redis/*.c) pubsub/ps_origins.c)
$(BUILD)/tests/test_kafka: $(call obj,tests/unit/test_kafka.c $(wildcard backends/kafka/*.c) $(PS_SRC) kvstore/kv_value.c)
$(BUILD)/tests/test_tls: $(call obj,tests/unit/test_tls.c server/srv_tls.c)
$(BUILD)/tests/test_mongodb: $(call obj,tests/unit/test_mongodb.c $(KV_SRC) $(wildcard backends/mongodb/*.c))
$(UNIT_TESTS):
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) $^ -o $@ $(LDLIBS_ALL) -lcmocka

# libFuzzer harnesses (docs/fuzzing.md), built with MODE=fuzz by clang in
# their own directory whatever CC is. fuzz_envelope includes the Kafka
# provider's source for its static header decoders, so it links no
# kafka_pubsub.o of its own.
FUZZ_CC      ?= clang
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TEST_SECONDS ?= 15
FUZZ_TARGETS ?= http ws request config envelope
FUZZ_APP_SRC = $(KV_SRC) $(MEM_SRC) $(NET_SRC) $(PS_SRC) $(SRV_LIB_SRC) \
               $(SRV_APP_SRC)
FUZZ_BINS = $(addprefix $(BUILD)/fuzz/fuzz_,http ws request config envelope)

FUZZ_NET_SRC = tests/fuzz/fuzz_net.c tests/fuzz/fuzz_backend.c

$(BUILD)/fuzz/fuzz_http: $(call obj,tests/fuzz/fuzz_http.c $(FUZZ_NET_SRC) \
        $(FUZZ_APP_SRC)) $(DASH_GEN:.c=.o)
$(BUILD)/fuzz/fuzz_ws: $(call obj,tests/fuzz/fuzz_ws.c $(FUZZ_NET_SRC) \
        $(FUZZ_APP_SRC)) $(DASH_GEN:.c=.o)
$(BUILD)/fuzz/fuzz_request: $(call obj,tests/fuzz/fuzz_request.c \
        $(FUZZ_APP_SRC)) $(DASH_GEN:.c=.o)
$(BUILD)/fuzz/fuzz_config: $(call obj,tests/fuzz/fuzz_config.c \
        $(SRV_CONFIG_SRC) server/srv_log.c $(KV_SRC))
$(BUILD)/fuzz/fuzz_envelope: $(call obj,tests/fuzz/fuzz_envelope.c \
        $(wildcard backends/redis/*.c) $(PS_SRC) $(KV_SRC))
$(FUZZ_BINS):
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) $^ -o $@ $(LDLIBS_ALL)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

deps:
	@tests/tools/install-deps

run: deps all
	$(KVBUSD) $(ARGS)

test-unit: $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do echo "== $$t"; $$t; done

# The conformance suite runs once per backend, each against its own server,
# then once more over TLS (https, wss) for E2E_TLS_BACKENDS.
E2E_BACKENDS ?= memory redis postgres mongodb
E2E_TLS_BACKENDS ?= memory
# The MongoDB wire-protocol test double's own tests: its Node tests, then
# a libmongoc client (smoke.c) against it.
test-fixtures:
	node --test tests/fixtures/mongo-double/test/*.test.mjs
	tests/fixtures/mongo-double/test/run-smoke

test-e2e: $(KVBUSD)
	@KVBUSD=$(abspath $(KVBUSD)) KVBUS_TEST_BACKENDS="$(E2E_BACKENDS)" \
	    tests/e2e/run
	$(if $(strip $(E2E_TLS_BACKENDS)),@KVBUSD=$(abspath $(KVBUSD)) \
	    KVBUS_TEST_BACKENDS="$(E2E_TLS_BACKENDS)" KVBUS_TEST_TLS=1 \
	    tests/e2e/run)

test: deps format-check
	$(MAKE) MODE=release BUILD=build test-unit test-fixtures test-e2e
	$(MAKE) MODE=asan BUILD=build-asan test-unit test-e2e
	$(MAKE) fuzz FUZZ_SECONDS=$(FUZZ_TEST_SECONDS)

asan:
	$(MAKE) MODE=asan BUILD=build-asan all

bench: deps all
	@KVBUSD=$(abspath $(KVBUSD)) tests/bench/run

fuzz-bins: $(FUZZ_BINS)

fuzz-build: deps
	$(MAKE) MODE=fuzz BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) fuzz-bins

# Every kept input (tests/fuzz/regressions/, tests/fuzz/corpus/) once.
fuzz-regress: fuzz-build
	@tests/fuzz/run regress $(FUZZ_BUILD) 0 $(FUZZ_TARGETS)

fuzz: fuzz-regress
	@tests/fuzz/run fuzz $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

format-check:
	@clang-format --dry-run --Werror $(shell git ls-files '*.c' '*.h') \
	    && echo "format-check: ok"

clean:
	rm -rf build build-asan $(FUZZ_BUILD)
