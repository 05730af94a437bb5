package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

func newGroupsListCmd(stdout, stderr io.Writer) *cobra.Command {
	var asJSON bool
	var conn connFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the consumer groups: backlog, members, idle time, abandoned",
		Long: `Lists the consumer groups of the outbox (AdminService/ListGroups, role
admin): the actions each has pending (delivered, not acknowledged) and not
yet delivered, its members, when one last read or acknowledged, and whether
it is abandoned (idle for nudged's delivery.group_idle).`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return exitWith(groupsList(conn, asJSON, stdout, stderr))
		},
	}
	conn = addConnFlags(cmd.Flags(), true)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

func newGroupsDeleteCmd(stdout, stderr io.Writer) *cobra.Command {
	var asJSON bool
	var conn connFlags
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Destroy a consumer group, with what it had pending (stop its subscribers first)",
		Long: `Destroys consumer group NAME on every outbox stream, with the actions it
had pending, and forgets its activity (AdminService/DeleteGroup, role
admin). Stop its subscribers first: a member still subscribed makes the
group again, from the oldest action kept.`,
		Args: oneArg("NAME"),
		RunE: func(_ *cobra.Command, args []string) error {
			return exitWith(groupsDelete(conn, args[0], asJSON, stdout, stderr))
		},
	}
	conn = addConnFlags(cmd.Flags(), true)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

// groupsList: nudgectl groups list (AdminService, role admin or console).
func groupsList(conn connFlags, asJSON bool, stdout, stderr io.Writer) int {
	return conn.call("nudgectl groups list", stderr, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		resp, err := nudgev1.NewAdminServiceClient(cc).ListGroups(ctx, &nudgev1.ListGroupsRequest{})
		if err != nil {
			return err
		}
		if asJSON {
			printProto(stdout, resp, true)
		} else {
			printGroups(stdout, resp.GetGroups())
		}
		return nil
	})
}

// groupsDelete: nudgectl groups delete NAME (AdminService, role admin).
func groupsDelete(conn connFlags, name string, asJSON bool, stdout, stderr io.Writer) int {
	return conn.call("nudgectl groups delete", stderr, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		resp, err := nudgev1.NewAdminServiceClient(cc).DeleteGroup(ctx, &nudgev1.DeleteGroupRequest{Group: name})
		if err != nil {
			return err
		}
		if asJSON {
			printProto(stdout, resp, true)
		} else {
			fmt.Fprintf(stdout, "deleted consumer group %s from %d outbox streams\n", name, resp.GetStreams())
		}
		return nil
	})
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
