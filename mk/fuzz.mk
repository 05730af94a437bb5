# Fuzzing. Include from the main Makefile, or run `make -f mk/fuzz.mk fuzz`.
#
#   fuzz       run every fuzz target of the module, one after another, each
#              for FUZZTIME (default 60s) with FUZZPARALLEL workers (default
#              2); fails at the end if any target failed
#   fuzz-list  print the fuzz targets `make fuzz` runs
#
# Targets are discovered, not listed: every `func FuzzXxx(f *testing.F)` in
# a _test.go file, so a new one is fuzzed without editing this file. Their
# seed corpora are the f.Add calls and testdata/fuzz/FuzzXxx/ next to them.
# A failing input is written there by `go test`: commit it with the fix, as
# a regression test that plain `go test` runs.

FUZZ_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)

GO ?= go
FUZZTIME ?= 60s
FUZZPARALLEL ?= 2

# fuzz_targets prints "dir:FuzzName" for every fuzz target under FUZZ_ROOT.
define fuzz_targets
cd $(FUZZ_ROOT) && grep -rEo --include='*_test.go' --exclude-dir=node_modules --exclude-dir=.git \
  '^func Fuzz[A-Za-z0-9_]*\([A-Za-z_][A-Za-z0-9_]* \*testing\.F\)' . | \
  sed -E 's|^(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]*)\(.*|\1:\2|' | sort -u
endef

.PHONY: fuzz fuzz-list

fuzz-list:
	@$(fuzz_targets)

fuzz:
	@targets=$$($(fuzz_targets)); \
	if [ -z "$$targets" ]; then echo "no fuzz targets found under $(FUZZ_ROOT)" >&2; exit 1; fi; \
	cd $(FUZZ_ROOT); failed=""; \
	for t in $$targets; do \
	  dir=$${t%%:*}; name=$${t#*:}; \
	  echo "== $$name ($$dir) for $(FUZZTIME)"; \
	  $(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) -parallel=$(FUZZPARALLEL) "$$dir" || failed="$$failed $$name"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets that failed:$$failed" >&2; exit 1; fi
