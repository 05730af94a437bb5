# The chaos suite (integration/chaos_test.go, RELIABILITY.md). Include from
# the main Makefile.
#
#   chaos-short  every scenario at its short size, printing its figures
#                (about 2 minutes here; `make test`, which CI runs, runs
#                the same tests quietly)
#   chaos        every scenario at the sizes of RELIABILITY.md

GO ?= go

.PHONY: chaos-short chaos

chaos-short: ensure-tools
	@GO="$(GO)" bash scripts/chaos.sh short

chaos: ensure-tools
	@GO="$(GO)" bash scripts/chaos.sh full
