# kvbus - one plain Makefile.
#
#   make            build build/kvbusd (optimised, with debug symbols)
#   make run        install what is missing, build, start kvbusd on defaults
#   make test       install what is missing, build, run unit + e2e tests,
#                   then the same again under ASan+UBSan
#   make asan       the sanitizer build in build-asan/
#   make bench      benchmarks against redis-benchmark in the same run
#   make format-check   clang-format over the C sources
#
# User CFLAGS are appended to ours, never replace them.

CC       ?= cc
BUILD    ?= build
MODE     ?= release
PKGS      = libuv jansson inih libxxhash libcrypto hiredis libpq rdkafka \
            libmongoc-1.0
LIBS_EXTRA = -lhttp_parser -lwslay -lm

ifeq ($(MODE),asan)
  OPT = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
        -fno-sanitize-recover=undefined
  LDOPT = -fsanitize=address,undefined
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

KV_SRC   = kvstore/kvstore.c kvstore/kv_value.c
MEM_SRC  = backends/memory/mem_kv.c
# Network backends: every .c in their folders (tests/unit/test_<name>.c
# links them with the kvstore core).
NET_SRC  = $(wildcard backends/redis/*.c backends/postgres/*.c \
                      backends/kafka/*.c backends/mongodb/*.c)
PS_SRC   = pubsub/ps_bus.c pubsub/ps_queue.c pubsub/ps_memory.c \
           pubsub/ps_origins.c
PS_LINK ?= $(PS_SRC)
SRV_LIB_SRC = server/srv_config.c server/srv_request.c server/srv_log.c
SRV_SRC  = server/main.c server/srv_http.c server/srv_routes.c \
           server/srv_metrics.c server/srv_ws.c

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))

KVBUSD   = $(BUILD)/kvbusd
UNIT_TESTS = $(BUILD)/tests/test_kvstore $(BUILD)/tests/test_memory \
             $(BUILD)/tests/test_config $(BUILD)/tests/test_request \
             $(BUILD)/tests/test_pubsub $(BUILD)/tests/test_postgres \
             $(BUILD)/tests/test_redis $(BUILD)/tests/test_kafka

.PHONY: all run test test-unit test-e2e asan bench deps clean format-check

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
$(BUILD)/tests/test_config: $(call obj,tests/unit/test_config.c server/srv_config.c server/srv_log.c $(KV_SRC))
$(BUILD)/tests/test_request: $(call obj,tests/unit/test_request.c server/srv_request.c $(KV_SRC))
$(BUILD)/tests/test_pubsub: $(call obj,tests/unit/test_pubsub.c $(PS_SRC) kvstore/kv_value.c)
$(BUILD)/tests/test_postgres: $(call obj,tests/unit/test_postgres.c $(KV_SRC) $(wildcard backends/postgres/*.c))
$(BUILD)/tests/test_redis: $(call obj,tests/unit/test_redis.c $(KV_SRC) $(wildcard backends/redis/*.c) pubsub/ps_origins.c)
$(BUILD)/tests/test_kafka: $(call obj,tests/unit/test_kafka.c $(wildcard backends/kafka/*.c) $(PS_SRC) kvstore/kv_value.c)
UNIT_TESTS += $(BUILD)/tests/test_mongodb
$(BUILD)/tests/test_mongodb: $(call obj,tests/unit/test_mongodb.c $(KV_SRC) $(wildcard backends/mongodb/*.c))
$(UNIT_TESTS):
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) $^ -o $@ $(LDLIBS_ALL) -lcmocka

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

deps:
	@tests/tools/install-deps

run: deps all
	$(KVBUSD) $(ARGS)

test-unit: $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do echo "== $$t"; $$t; done

# The conformance suite runs once per backend, each against its own server.
E2E_BACKENDS ?= memory redis postgres mongodb
test-e2e: $(KVBUSD)
	@KVBUSD=$(abspath $(KVBUSD)) KVBUS_TEST_BACKENDS="$(E2E_BACKENDS)" \
	    tests/e2e/run

test: deps format-check
	$(MAKE) MODE=release BUILD=build test-unit test-e2e
	$(MAKE) MODE=asan BUILD=build-asan test-unit test-e2e

asan:
	$(MAKE) MODE=asan BUILD=build-asan all

bench: deps all
	@KVBUSD=$(abspath $(KVBUSD)) tests/bench/run

format-check:
	@clang-format --dry-run --Werror $(shell git ls-files '*.c' '*.h') \
	    && echo "format-check: ok"

clean:
	rm -rf build build-asan
