package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// decisions tail and actions dead call AdminService (role admin or
// console), so they work against any nudged, the embedded store included,
// and tokens apply.

func newDecisionsTailCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		conn   connFlags
		all    bool
		n      int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Follow the decisions nudged samples (AdminService/TailDecisions, role admin or console)",
		Long: `Follows the decisions nudged samples to its decision log
(decision.audit_sample, --audit-sample: 0.01 by default; 0 logs none): one
line per decision with its reasons indented below, or one JSON object per
decision with --json. Calls AdminService/TailDecisions (role admin or console) until
interrupted or -n entries are printed.`,
		Example: "  nudgectl decisions tail --all -n 20",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return exitWith(decisionsTail(conn, all, n, asJSON, stdout, stderr))
		},
	}
	conn = addConnFlags(cmd.Flags(), false)
	fs := cmd.Flags()
	fs.BoolVar(&all, "all", false, "start from the oldest entry kept, not only new ones")
	fs.IntVarP(&n, "n", "n", 0, "exit after this many entries (0: follow until interrupted)")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object per entry")
	return cmd
}

// decisionsTail: nudgectl decisions tail.
func decisionsTail(conn connFlags, all bool, n int, asJSON bool, stdout, stderr io.Writer) int {
	const cmd = "nudgectl decisions tail"
	if n < 0 || n > 1_000_000 {
		fmt.Fprintf(stderr, "%s: -n %d: want 0 (follow) to 1000000\n", cmd, n)
		return 2
	}
	cl, err := conn.dial()
	if err != nil {
		return dialFailed(stderr, cmd, err)
	}
	defer cl.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = tailDecisionsRPC(ctx, nudgev1.NewAdminServiceClient(cl.Conn()), all, n, func(e *nudgev1.DecisionLogEntry) error {
		if asJSON {
			_, err := fmt.Fprintln(stdout, decisionLogEntryJSON(e))
			return err
		}
		_, err := fmt.Fprintln(stdout, formatDecisionLogEntry(e))
		return err
	})
	if err != nil {
		fmt.Fprintf(stderr, "%s: %s\n", cmd, conn.Describe(err))
		return 1
	}
	return 0
}

func newActionsDeadCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		conn   connFlags
		n      int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "dead",
		Short: "List the dead-letter stream (AdminService/ListDeadActions, role admin or console)",
		Long: `Lists the actions that went to the dead-letter stream after nudged's
delivery.max_deliveries, oldest first: a table, or one JSON object per
entry with --json. Calls AdminService/ListDeadActions (role admin or console).`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return exitWith(actionsDead(conn, n, asJSON, stdout, stderr))
		},
	}
	conn = addConnFlags(cmd.Flags(), true)
	fs := cmd.Flags()
	fs.IntVarP(&n, "n", "n", 100, "list at most this many, oldest first (0: all)")
	fs.BoolVar(&asJSON, "json", false, "print JSON lines")
	return cmd
}

// actionsDead: nudgectl actions dead.
func actionsDead(conn connFlags, n int, asJSON bool, stdout, stderr io.Writer) int {
	const cmd = "nudgectl actions dead"
	if n < 0 {
		fmt.Fprintf(stderr, "%s: -n %d: want 0 (all) or more\n", cmd, n)
		return 2
	}
	return conn.call(cmd, stderr, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		dead, err := listDeadRPC(ctx, nudgev1.NewAdminServiceClient(cc), n)
		if err != nil {
			return err
		}
		if !asJSON {
			printDeadLetters(stdout, deadActionRows(dead))
			return nil
		}
		for _, d := range dead {
			fmt.Fprintln(stdout, deadActionJSON(d))
		}
		return nil
	})
}
