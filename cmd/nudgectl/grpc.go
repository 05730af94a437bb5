package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/internal/clientflags"
	"github.com/nudge-dm/nudge/internal/daemon"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// conn flags shared by the commands that talk to nudged.
type connFlags struct {
	addr    *string
	timeout *time.Duration
	asJSON  *bool
	*clientflags.Flags
}

func addConnFlags(fs *flag.FlagSet) connFlags {
	return connFlags{
		addr:    fs.String("addr", "127.0.0.1:7070", "nudged address"),
		timeout: fs.Duration("timeout", 10*time.Second, "call timeout"),
		asJSON:  fs.Bool("json", false, "print the response as JSON"),
		Flags:   clientflags.Register(fs, "command's", os.Getenv),
	}
}

// dial connects to --addr with the security flags.
func (c connFlags) dial() (*client.Client, error) { return c.Dial(*c.addr) }

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

// parseInterleaved parses flags that may come after positional arguments
// (nudgectl decide USER --channel sms).
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// decide: nudgectl decide USER --channel C [--placement P] [--budget D] [--explain]
func decide(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nudgectl decide", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addConnFlags(fs)
	channel := fs.String("channel", "", "channel to decide for (required)")
	placement := fs.String("placement", "", "placement")
	budget := fs.Duration("budget", 0, "decision budget (default: the server's)")
	explain := fs.Bool("explain", false, "include the evaluation trace")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 || *channel == "" {
		fmt.Fprintln(stderr, "usage: nudgectl decide USER --channel C [--placement P] [--budget D] [--explain] [--addr A] [--json] [security flags: nudgectl help]")
		return 2
	}
	c, err := cf.dial()
	if err != nil {
		return dialFailed(stderr, "nudgectl decide", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *cf.timeout)
	defer cancel()
	req := &nudgev1.GetDecisionRequest{UserId: pos[0], Channel: *channel, Placement: *placement, Explain: *explain}
	if *budget > 0 {
		req.Budget = durationpb.New(*budget)
	}
	resp, err := nudgev1.NewDecisionServiceClient(c.Conn()).GetDecision(ctx, req)
	if err != nil {
		fmt.Fprintln(stderr, "nudgectl decide:", cf.Describe(err))
		return 1
	}
	printProto(stdout, resp, *cf.asJSON)
	return 0
}

// profileCmd: nudgectl profile get|delete USER
func profileCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nudgectl profile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addConnFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 2 || (pos[0] != "get" && pos[0] != "delete") {
		fmt.Fprintln(stderr, "usage: nudgectl profile get|delete USER [--addr A] [--json] [security flags: nudgectl help]")
		return 2
	}
	cl, err := cf.dial()
	if err != nil {
		return dialFailed(stderr, "nudgectl profile "+pos[0], err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *cf.timeout)
	defer cancel()
	c := nudgev1.NewProfileServiceClient(cl.Conn())
	var resp proto.Message
	if pos[0] == "get" {
		resp, err = c.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: pos[1]})
	} else {
		resp, err = c.DeleteProfile(ctx, &nudgev1.DeleteProfileRequest{UserId: pos[1]})
	}
	if err != nil {
		fmt.Fprintf(stderr, "nudgectl profile %s: %s\n", pos[0], cf.Describe(err))
		return 1
	}
	printProto(stdout, resp, *cf.asJSON)
	return 0
}

// actionsTail: nudgectl actions tail --group G [--channels sms,push] [--ack] [-n N]
func actionsTail(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nudgectl actions tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addConnFlags(fs)
	group := fs.String("group", "", "consumer group (required)")
	consumer := fs.String("consumer", "", "member name (default: made up by the server)")
	channels := fs.String("channels", "", "comma-separated channel filter")
	ack := fs.Bool("ack", false, "acknowledge each action printed (consumes it for the group)")
	count := fs.Int("n", 0, "exit after this many actions (0: until interrupted)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *group == "" {
		fmt.Fprintln(stderr, "usage: nudgectl actions tail --group G [--channels C,...] [--ack] [-n N] [--addr A] [--json] [security flags: nudgectl help]")
		return 2
	}
	cl, err := cf.dial()
	if err != nil {
		return dialFailed(stderr, "nudgectl actions tail", err)
	}
	defer cl.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	c := nudgev1.NewActionServiceClient(cl.Conn())
	req := &nudgev1.SubscribeRequest{Group: *group, Consumer: *consumer}
	if *channels != "" {
		req.Channels = strings.Split(*channels, ",")
	}
	stream, err := c.Subscribe(ctx, req)
	if err != nil {
		fmt.Fprintln(stderr, "nudgectl actions tail:", cf.Describe(err))
		return 1
	}
	for n := 0; *count == 0 || n < *count; n++ {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return 0
			}
			fmt.Fprintln(stderr, "nudgectl actions tail:", cf.Describe(err))
			return 1
		}
		if *cf.asJSON {
			b, _ := protojson.Marshal(resp)
			fmt.Fprintln(stdout, string(b))
		} else {
			a := resp.GetAction()
			fmt.Fprintf(stdout, "%s %s user=%s %s via %s template=%s payload=%v delivery=%d\n",
				a.GetTriggeredAt().AsTime().Format(time.RFC3339), a.GetActionId(), a.GetUserId(), a.GetTriggerId(), a.GetChannel(), a.GetTemplate(), a.GetPayload(), resp.GetDeliveryCount())
		}
		if *ack {
			// As the member the server delivered to (the name it made up
			// without --consumer): only that member's deliveries count.
			if _, err := c.Ack(ctx, &nudgev1.AckRequest{Group: *group, Consumer: resp.GetConsumer(), AckIds: []string{resp.GetAckId()}}); err != nil {
				fmt.Fprintln(stderr, "nudgectl actions tail: ack:", cf.Describe(err))
				return 1
			}
		}
	}
	return 0
}

// actionsDead: nudgectl actions dead [--redis-addr A] [-n N] [--json]
func actionsDead(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nudgectl actions dead", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("redis-addr", "127.0.0.1:6379", "Redis host:port that nudged uses")
	count := fs.Int64("n", 100, "list at most this many, oldest first")
	asJSON := fs.Bool("json", false, "print JSON lines")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	opt, err := daemon.RedisOptions(*addr)
	if err != nil {
		fmt.Fprintln(stderr, "nudgectl: --redis-addr:", err)
		return 2
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dead, err := delivery.New(rdb, redisstore.Layout{}, delivery.Options{}).Dead(ctx, *count)
	if err != nil {
		fmt.Fprintln(stderr, "nudgectl actions dead:", err)
		return 1
	}
	for _, d := range dead {
		if *asJSON {
			fmt.Fprintln(stdout, jsonLine(map[string]any{"id": d.ID, "group": d.Group, "delivery_count": d.DeliveryCount, "fields": d.Values}))
			continue
		}
		fmt.Fprintf(stdout, "%s group=%s deliveries=%d action=%v user=%v trigger=%v channel=%v\n",
			d.ID, d.Group, d.DeliveryCount, d.Values["action_id"], d.Values["user_id"], d.Values["trigger_id"], d.Values["channel"])
	}
	if len(dead) == 0 && !*asJSON {
		fmt.Fprintln(stdout, "no dead letters")
	}
	return 0
}
