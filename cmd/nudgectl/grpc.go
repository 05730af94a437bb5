package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// printProto prints a message as one line of JSON (--json, for scripts) or
// as indented JSON for people.
func printProto(w io.Writer, m proto.Message, asJSON bool) {
	opt := protojson.MarshalOptions{Multiline: !asJSON, Indent: "  "}
	if asJSON {
		opt.Indent = ""
	}
	b, _ := opt.Marshal(m) // generated messages cannot fail
	fmt.Fprintln(w, string(b))
}

// oneArg accepts exactly one argument, named name in the error.
func oneArg(name string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("takes one %s, got %d arguments", name, len(args))
		}
		return nil
	}
}

// errEmptyFlag is the usage error of a required flag given empty.
func errEmptyFlag(name string) error { return fmt.Errorf("flag %q is empty", name) }

// decideOptions are the flags of nudgectl decide.
type decideOptions struct {
	conn      connFlags
	asJSON    bool
	channel   string
	placement string
	budget    time.Duration
	explain   bool
}

func newDecideCmd(stdout, stderr io.Writer) *cobra.Command {
	var o decideOptions
	cmd := &cobra.Command{
		Use:   "decide USER --channel C",
		Short: "Ask nudged for a decision on a channel (role decide)",
		Long: `Asks nudged which offer, if any, to show or send USER on channel C now
(DecisionService/GetDecision), and prints the answer: indented JSON, or one
line of it with --json.`,
		Example: "  nudgectl decide u42 --channel sms --explain",
		Args:    oneArg("USER"),
		RunE: func(_ *cobra.Command, args []string) error {
			if o.channel == "" {
				return errEmptyFlag("channel")
			}
			return exitWith(decide(o, args[0], stdout, stderr))
		},
	}
	fs := cmd.Flags()
	o.conn = addConnFlags(fs, true)
	fs.BoolVar(&o.asJSON, "json", false, "print the response as one line of JSON")
	fs.StringVar(&o.channel, "channel", "", "channel to decide for (required)")
	fs.StringVar(&o.placement, "placement", "", "placement")
	fs.DurationVar(&o.budget, "budget", 0, "decision budget (default: the server's)")
	fs.BoolVar(&o.explain, "explain", false, "include the evaluation trace")
	_ = cmd.MarkFlagRequired("channel") // the flag exists
	return cmd
}

// decide: nudgectl decide USER --channel C [--placement P] [--budget D] [--explain]
func decide(o decideOptions, user string, stdout, stderr io.Writer) int {
	c, err := o.conn.dial()
	if err != nil {
		return dialFailed(stderr, "nudgectl decide", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *o.conn.timeout)
	defer cancel()
	req := &nudgev1.GetDecisionRequest{UserId: user, Channel: o.channel, Placement: o.placement, Explain: o.explain}
	if o.budget > 0 {
		req.Budget = durationpb.New(o.budget)
	}
	resp, err := nudgev1.NewDecisionServiceClient(c.Conn()).GetDecision(ctx, req)
	if err != nil {
		fmt.Fprintln(stderr, "nudgectl decide:", o.conn.Describe(err))
		return 1
	}
	printProto(stdout, resp, o.asJSON)
	return 0
}

// newProfileCmd is nudgectl profile get USER or nudgectl profile delete
// USER, as verb says.
func newProfileCmd(verb string, stdout, stderr io.Writer) *cobra.Command {
	var asJSON bool
	var conn connFlags
	short := "Print a user's profile (ProfileService/GetProfile, role admin or console)"
	if verb == "delete" {
		short = "Erase a user's profile, outbox and audit entries (ProfileService/DeleteProfile, role admin)"
	}
	cmd := &cobra.Command{
		Use:   verb + " USER",
		Short: short,
		Args:  oneArg("USER"),
		RunE: func(_ *cobra.Command, args []string) error {
			return exitWith(profileCmd(verb, args[0], conn, asJSON, stdout, stderr))
		},
	}
	conn = addConnFlags(cmd.Flags(), true)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as one line of JSON")
	return cmd
}

// profileCmd: nudgectl profile get|delete USER
func profileCmd(verb, user string, conn connFlags, asJSON bool, stdout, stderr io.Writer) int {
	return conn.call("nudgectl profile "+verb, stderr, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		c := nudgev1.NewProfileServiceClient(cc)
		var resp proto.Message
		var err error
		if verb == "get" {
			resp, err = c.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: user})
		} else {
			resp, err = c.DeleteProfile(ctx, &nudgev1.DeleteProfileRequest{UserId: user})
		}
		if err != nil {
			return err
		}
		printProto(stdout, resp, asJSON)
		return nil
	})
}

// actionsTailOptions are the flags of nudgectl actions tail.
type actionsTailOptions struct {
	conn     connFlags
	asJSON   bool
	group    string
	consumer string
	channels string
	ack      bool
	count    int
}

func newActionsTailCmd(stdout, stderr io.Writer) *cobra.Command {
	var o actionsTailOptions
	cmd := &cobra.Command{
		Use:   "tail --group G",
		Short: "Subscribe to the actions as a member of a consumer group (role subscribe)",
		Long: `Subscribes to the triggered actions as a member of consumer group G
(ActionService/Subscribe) and prints each: one line, or its JSON with
--json. With --ack it acknowledges each one printed, which consumes it for
the group; without, the actions go back to the group when it exits.`,
		Example: "  nudgectl actions tail --group sms-sender --channels sms -n 10",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if o.group == "" {
				return errEmptyFlag("group")
			}
			return exitWith(actionsTail(o, stdout, stderr))
		},
	}
	fs := cmd.Flags()
	o.conn = addConnFlags(fs, true)
	fs.BoolVar(&o.asJSON, "json", false, "print one JSON object per action")
	fs.StringVar(&o.group, "group", "", "consumer group (required)")
	fs.StringVar(&o.consumer, "consumer", "", "member name (default: made up by the server)")
	fs.StringVar(&o.channels, "channels", "", "comma-separated channel filter")
	fs.BoolVar(&o.ack, "ack", false, "acknowledge each action printed (consumes it for the group)")
	fs.IntVarP(&o.count, "n", "n", 0, "exit after this many actions (0: until interrupted)")
	_ = cmd.MarkFlagRequired("group") // the flag exists
	return cmd
}

// actionsTail: nudgectl actions tail --group G [--channels sms,push] [--ack] [-n N]
func actionsTail(o actionsTailOptions, stdout, stderr io.Writer) int {
	cl, err := o.conn.dial()
	if err != nil {
		return dialFailed(stderr, "nudgectl actions tail", err)
	}
	defer cl.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	c := nudgev1.NewActionServiceClient(cl.Conn())
	req := &nudgev1.SubscribeRequest{Group: o.group, Consumer: o.consumer}
	if o.channels != "" {
		req.Channels = strings.Split(o.channels, ",")
	}
	stream, err := c.Subscribe(ctx, req)
	if err != nil {
		fmt.Fprintln(stderr, "nudgectl actions tail:", o.conn.Describe(err))
		return 1
	}
	for n := 0; o.count == 0 || n < o.count; n++ {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return 0
			}
			fmt.Fprintln(stderr, "nudgectl actions tail:", o.conn.Describe(err))
			return 1
		}
		if o.asJSON {
			b, _ := protojson.Marshal(resp)
			fmt.Fprintln(stdout, string(b))
		} else {
			a := resp.GetAction()
			fmt.Fprintf(stdout, "%s %s user=%s %s via %s template=%s payload=%v delivery=%d\n",
				a.GetTriggeredAt().AsTime().Format(time.RFC3339), a.GetActionId(), a.GetUserId(), a.GetTriggerId(), a.GetChannel(), a.GetTemplate(), a.GetPayload(), resp.GetDeliveryCount())
		}
		if o.ack {
			// As the member the server delivered to (the name it made up
			// without --consumer): only that member's deliveries count.
			if _, err := c.Ack(ctx, &nudgev1.AckRequest{Group: o.group, Consumer: resp.GetConsumer(), AckIds: []string{resp.GetAckId()}}); err != nil {
				fmt.Fprintln(stderr, "nudgectl actions tail: ack:", o.conn.Describe(err))
				return 1
			}
		}
	}
	return 0
}
