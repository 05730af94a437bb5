# The chaos suite (integration/chaos_test.go, RELIABILITY.md). Include from
# the main Makefile.
#
#   chaos-short  every scenario at its short size, printing its figures (CI
#                runs it; under a minute here; `make test` runs the same
#                tests quietly)
#   chaos        every scenario at the sizes of RELIABILITY.md

GO ?= go

.PHONY: chaos-short chaos

chaos-short: ensure-tools
	@GO="$(GO)" bash scripts/chaos.sh short

chaos: ensure-tools
	@GO="$(GO)" bash scripts/chaos.sh full
