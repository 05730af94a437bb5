// Command nudgectl is nudge's command-line tool.
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
//	    Replays events through the client's Publisher with progress and a
//	    summary; exit status 1 on rejected events or malformed lines
//	    (reported with their line number) unless --allow-rejects. Sending
//	    a file again is safe: event ids make it exactly once in effect.
//	nudgectl decide USER --channel C, nudgectl profile get|delete USER
//	    Call nudged (--addr) and print the answer (--json for JSON).
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
//
// The commands that call nudged (send, decide, profile, actions tail,
// groups, report) share its security flags, with the Go client's rules: --token sends a
// bearer token (default $NUDGE_TOKEN, which keeps the secret off the
// command line); --tls, --ca-file, --cert-file/--key-file (mutual TLS) and
// --server-name connect with TLS; without them a loopback --addr is dialled
// in plaintext and any other with TLS and the system roots. A token is
// only sent over TLS: --insecure connects in plaintext and allows it (e.g.
// to a loopback nudged). A refused call prints its status code and message
// on one line and exits 1; flags that cannot work exit 2.
package main

import (
	"fmt"
	"github.com/nudge-dm/nudge/internal/version"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  nudgectl version                        module version, VCS revision, Go version (also --version)
  nudgectl rules check [--json] FILE...   validate rules files offline
  nudgectl rules test FILE --event E.json [--profile P.json] [--channels C,...] [--now T] [--json]
                                          what the rules fire, schedule and decide for an event
  nudgectl decisions tail [--redis-addr ADDR] [--all] [-n N] [--json]
                                          follow the decision audit stream
  nudgectl send [FILE.jsonl|-] [--addr A] [--allow-rejects] [--json]
                                          replay events (one nudge.v1.Event JSON a line)
  nudgectl decide USER --channel C [--explain] [--addr A] [--json]
  nudgectl profile get|delete USER [--addr A] [--json]
  nudgectl actions tail --group G [--channels C,...] [--ack] [-n N] [--addr A] [--json]
  nudgectl actions dead [--redis-addr ADDR] [-n N] [--json]
  nudgectl groups list [--addr A] [--json]
                                          consumer groups: backlog, members, idle time, abandoned
  nudgectl groups delete NAME [--addr A] [--json]
                                          destroy a consumer group (stop its subscribers first)
  nudgectl report [CAMPAIGN] [--addr A] [--json]
                                          campaigns, treated vs control: exposed, converted, rate,
                                          value, uplift (pp), lift with its 95% CI, p-value

security flags of send, decide, profile, actions tail, groups and report, which call nudged (--addr, default 127.0.0.1:7070):
  --token T          bearer token (default: $NUDGE_TOKEN; prefer the variable,
                     a command line is visible to other users)
  --tls              connect with TLS (default: TLS, except to a loopback --addr)
  --ca-file F        PEM CA bundle that verifies nudged (default: system roots; implies --tls)
  --cert-file F --key-file F
                     client certificate for mutual TLS (implies --tls)
  --server-name N    name to verify nudged's certificate against (implies --tls)
  --insecure         plaintext, and allow sending the token so (e.g. to a loopback nudged);
                     without it a token is only sent over TLS
`

// run executes one command line and returns the exit status: 0 success,
// 1 the command's check failed, 2 bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 1 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help"):
		fmt.Fprint(stdout, usage)
		return 0
	case len(args) == 1 && (args[0] == "version" || args[0] == "--version"):
		fmt.Fprintln(stdout, version.String("nudgectl"))
		return 0
	case len(args) >= 2 && args[0] == "rules" && args[1] == "check":
		return rulesCheck(args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "rules" && args[1] == "test":
		return rulesTest(args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "decisions" && args[1] == "tail":
		return decisionsTail(args[2:], stdout, stderr)
	case len(args) >= 1 && args[0] == "send":
		return send(args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "decide":
		return decide(args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "profile":
		return profileCmd(args[1:], stdout, stderr)
	case len(args) >= 2 && args[0] == "actions" && args[1] == "tail":
		return actionsTail(args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "actions" && args[1] == "dead":
		return actionsDead(args[2:], stdout, stderr)
	case len(args) >= 1 && args[0] == "groups":
		return groupsCmd(args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "report":
		return report(args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, usage)
	return 2
}
