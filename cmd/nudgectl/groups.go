package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

const groupsUsage = "usage: nudgectl groups list|delete NAME [--addr A] [--json] [security flags: nudgectl help]"

// groupsCmd: nudgectl groups list, nudgectl groups delete NAME
// (AdminService, role admin).
func groupsCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nudgectl groups", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addConnFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2
	}
	switch {
	case len(pos) == 1 && pos[0] == "list":
	case len(pos) == 2 && pos[0] == "delete":
	default:
		fmt.Fprintln(stderr, groupsUsage)
		return 2
	}
	cmd := "nudgectl groups " + pos[0]
	cl, err := cf.dial()
	if err != nil {
		return dialFailed(stderr, cmd, err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *cf.timeout)
	defer cancel()
	admin := nudgev1.NewAdminServiceClient(cl.Conn())
	if pos[0] == "delete" {
		resp, err := admin.DeleteGroup(ctx, &nudgev1.DeleteGroupRequest{Group: pos[1]})
		if err != nil {
			fmt.Fprintf(stderr, "%s: %s\n", cmd, cf.Describe(err))
			return 1
		}
		if *cf.asJSON {
			printProto(stdout, resp, true)
		} else {
			fmt.Fprintf(stdout, "deleted consumer group %s from %d outbox streams\n", pos[1], resp.GetStreams())
		}
		return 0
	}
	resp, err := admin.ListGroups(ctx, &nudgev1.ListGroupsRequest{})
	if err != nil {
		fmt.Fprintf(stderr, "%s: %s\n", cmd, cf.Describe(err))
		return 1
	}
	if *cf.asJSON {
		printProto(stdout, resp, true)
		return 0
	}
	printGroups(stdout, resp.GetGroups())
	return 0
}

// printGroups prints the groups as a table for people.
func printGroups(w io.Writer, groups []*nudgev1.ConsumerGroup) {
	if len(groups) == 0 {
		fmt.Fprintln(w, "no consumer groups")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tPENDING\tUNDELIVERED\tCONSUMERS\tLAST ACTIVE\tIDLE\tSTATE")
	for _, g := range groups {
		undelivered := fmt.Sprint(g.GetUndelivered())
		if n := g.GetUnknownLagStreams(); n > 0 {
			undelivered += fmt.Sprintf(" (+? on %d streams)", n)
		}
		last, idle := "-", "-"
		if g.GetLastActive() != nil {
			last = g.GetLastActive().AsTime().UTC().Format(time.RFC3339)
			idle = g.GetIdle().AsDuration().Round(time.Second).String()
		}
		state := "live"
		if g.GetAbandoned() {
			state = "abandoned"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\t%s\n", g.GetName(), g.GetPending(), undelivered, g.GetConsumers(), last, idle, state)
	}
	_ = tw.Flush()
}
