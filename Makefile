# moexc - build, test, bench, portability.
#   make            build the tests, tools and examples
#   make test       build and run the whole test suite
#   make bench      run the benchmarks (GEMM vs OpenBLAS, training vs PyTorch, ...)
#   make portable   the portability matrix (compilers, C++, tcc, scalar, aarch64, s390x)
#   make sanitize   the test suite under AddressSanitizer + UBSan (clang)
# Variables: CC, CFLAGS, OPENMP=0/1 (default 1 when the compiler has it),
# NATIVE=0/1 (default 1: -march=native when the compiler accepts it).

CC      ?= cc
OPENMP  ?= 1
NATIVE  ?= 1
BUILD   ?= build
PYTHON  ?= /usr/bin/python3

WARN    := -std=c99 -Wall -Wextra -pedantic -Werror
OPT     ?= -O2
ifeq ($(NATIVE),1)
ARCH    := $(shell $(CC) -march=native -x c -c -o /dev/null /dev/null 2>/dev/null && echo -march=native)
endif
ifeq ($(OPENMP),1)
OMP     := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c -o /dev/null - 2>/dev/null && echo -fopenmp)
endif
CFLAGS  ?= $(OPT) -g
ALL_CFLAGS = $(WARN) $(CFLAGS) $(ARCH) $(OMP) -I.
LDLIBS  := -lm

TEST_SRCS    := $(wildcard tests/test_*.c)
TEST_BINS    := $(TEST_SRCS:tests/%.c=$(BUILD)/%)
TOOL_SRCS    := $(wildcard tools/*.c)
TOOL_BINS    := $(TOOL_SRCS:tools/%.c=$(BUILD)/%)
EXAMPLE_SRCS := $(wildcard examples/*.c)
EXAMPLE_BINS := $(EXAMPLE_SRCS:examples/%.c=$(BUILD)/%)

.PHONY: all test bench portable sanitize clean
all: $(TEST_BINS) $(TOOL_BINS) $(EXAMPLE_BINS)

$(BUILD):
	mkdir -p $(BUILD)

# The implementation is compiled once; tests, tools and examples link to it.
$(BUILD)/moexc.o: tests/moexc_impl.c moexc.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/test_%: tests/test_%.c $(BUILD)/moexc.o tests/harness.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) $< $(BUILD)/moexc.o -o $@ $(LDLIBS) $(EXTRA_LIBS_$*)

$(BUILD)/%: tools/%.c $(BUILD)/moexc.o | $(BUILD)
	$(CC) $(ALL_CFLAGS) $(EXTRA_CFLAGS_$*) $< $(BUILD)/moexc.o -o $@ $(LDLIBS) $(EXTRA_LIBS_$*)

$(BUILD)/%: examples/%.c $(BUILD)/moexc.o | $(BUILD)
	$(CC) $(ALL_CFLAGS) $(EXTRA_CFLAGS_$*) $< $(BUILD)/moexc.o -o $@ $(LDLIBS) $(EXTRA_LIBS_$*)

test: $(TEST_BINS)
	sh tests/run_tests.sh $(TEST_BINS)

clean:
	rm -rf $(BUILD)

# ---- area: kernels and portability ----------------------------------------

# ---- area: gemm and bench -------------------------------------------------

# ---- area: model and training ---------------------------------------------

# ---- area: data and checkpoints -------------------------------------------

# ---- area: crosscoder -----------------------------------------------------

# ---- area: analysis and plots ---------------------------------------------
