// Command nudgectl is nudge's command-line tool. Every command has its own
// help: nudgectl help COMMAND, or nudgectl COMMAND -h.
//
//	nudgectl rules check [--json] FILE...
//	    Validates rules files offline with the server's own compiler. Exit
//	    status 1 when a file has errors, each printed as
//	    FILE:LINE: trigger|offer "ID": FIELD: problem.
//	nudgectl rules test FILE --event E.json [--profile P.json] [--channels sms,push] [--now T] [--json]
//	    Applies the event (after the history in P.json, {"events": [...]},
//	    both in nudge.v1.Event JSON) to a profile with the rules, and shows
//	    the triggers that fire, the journey steps it schedules and what
//	    each does at its due time, and the decision on each channel with
//	    its trace: for rule authors, no server needed.
//	nudgectl decisions tail [--redis-addr A] [--all] [-n N] [--json]
//	    Follows the decision audit stream (nudged --audit-sample).
//	nudgectl send [FILE.jsonl|-] [--allow-rejects]
//	    Replays events through the client's Publisher with progress (a bar
//	    with the total and an ETA when stderr is a terminal, a line a second
//	    otherwise) and a summary; exit status 1 on rejected events or
//	    malformed lines (reported with their line number) unless
//	    --allow-rejects. Sending a file again is safe: event ids make it
//	    exactly once in effect.
//	nudgectl decide USER --channel C, nudgectl profile get|delete USER
//	    Call nudged (--addr) and print the answer (--json for JSON).
//	nudgectl features get USER... [--features a,b] [--json]
//	    The features of the rules in force for the users, now: a table
//	    (ProfileService/GetFeatures, role features or admin).
//	nudgectl features export [--format jsonl|parquet] [--features a,b] [-o FILE]
//	    Every stored user's features, evaluated at one instant with one
//	    version of the rules, written as they arrive: JSON lines, or a
//	    parquet file with a column per feature (ExportFeatures).
//	nudgectl actions tail --group G [--ack]
//	    Subscribes to the actions as a member of group G; with --ack it
//	    consumes them.
//	nudgectl actions dead
//	    Lists the dead-letter stream (actions delivered too many times).
//	nudgectl groups list, nudgectl groups delete NAME
//	    Lists the consumer groups of the outbox (backlog, members, idle
//	    time, abandoned or not), or destroys one with what it had pending
//	    (AdminService, role admin).
//	nudgectl report [CAMPAIGN]
//	    Measures campaigns (AdminService, role admin): for each trigger,
//	    journey step and offer of the rules in force, or the one named,
//	    its treated and control users exposed and converted, conversion
//	    rate and value, the uplift in percentage points, the lift with its
//	    95% confidence interval and the p-value ("-" where the counts do
//	    not define them; docs/rules.md, "Measuring campaigns").
//	nudgectl version (or --version)
//	    The module version, VCS revision and Go version.
//	nudgectl completion bash|zsh|fish|powershell
//	    A shell completion script (nudgectl completion bash -h says where
//	    to put it).
//
// Lists (groups, reports, dead letters) print as tables for people and,
// with --json, as the JSON they always had. Flags may come before or after
// the arguments, with two dashes or, as with Go's flag package, one
// (-addr).
//
// The commands that call nudged (send, decide, profile, features, actions
// tail, groups, report) share its security flags, with the Go client's rules: --token sends a
// bearer token (default $NUDGE_TOKEN, which keeps the secret off the
// command line); --tls, --ca-file, --cert-file/--key-file (mutual TLS) and
// --server-name connect with TLS; without them a loopback --addr is dialled
// in plaintext and any other with TLS and the system roots. A token is
// only sent over TLS: --insecure connects in plaintext and allows it (e.g.
// to a loopback nudged). A refused call prints its status code and message
// on one line and exits 1; flags that cannot work, unknown commands and
// flags and missing arguments exit 2.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
