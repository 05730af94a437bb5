# Fuzzing (scripts/fuzz.sh). Include from the main Makefile.
#
#   fuzz       run every fuzz target of the module, one after another, each
#              for FUZZTIME (default 60s) with FUZZPARALLEL workers (default
#              2); fails at the end if any target failed
#   fuzz-short every target for 10s (CI runs it)
#   fuzz-list  print the fuzz targets `make fuzz` runs

GO ?= go
FUZZTIME ?= 60s
FUZZPARALLEL ?= 2

.PHONY: fuzz fuzz-short fuzz-list

fuzz-list:
	@bash scripts/fuzz.sh --list

fuzz:
	@GO="$(GO)" FUZZTIME="$(FUZZTIME)" FUZZPARALLEL="$(FUZZPARALLEL)" bash scripts/fuzz.sh

fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=10s
