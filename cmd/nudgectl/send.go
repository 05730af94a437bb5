package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// sendSummary is what send reports at the end (--json prints it).
type sendSummary struct {
	Lines     int     `json:"lines"`
	Malformed int     `json:"malformed"`
	Published uint64  `json:"published"`
	Applied   uint64  `json:"applied"`
	Duplicate uint64  `json:"duplicate"`
	Rejected  uint64  `json:"rejected"`
	Failed    uint64  `json:"failed"`
	Resent    uint64  `json:"resent"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"events_per_second"`
}

// sendOptions are the flags of nudgectl send.
type sendOptions struct {
	conn         connFlags
	allowRejects bool
	asJSON       bool
	quiet        bool
	maxBatch     int
}

func newSendCmd(stdout, stderr io.Writer) *cobra.Command {
	var o sendOptions
	cmd := &cobra.Command{
		Use:   "send [FILE.jsonl|-]",
		Short: "Replay events from a file (one nudge.v1.Event JSON a line) (role ingest)",
		Long: `Replays events, one nudge.v1.Event JSON a line, from FILE.jsonl (or
standard input, without FILE or with -) through the client's Publisher:
batched, re-sent after reconnects, exactly once in effect thanks to the
event ids, so sending a file again is safe.

Progress goes to stderr: a bar with the total and an ETA when stderr is a
terminal and the input a file, a line a second otherwise (--quiet: none).
A summary goes to stdout at the end (--json: as JSON). Malformed lines are
reported with their line number. The exit status is 1 on rejected events
or malformed lines unless --allow-rejects, and on events not acknowledged.`,
		Example: "  nudgectl send day.jsonl --addr nudge.internal:7070 --ca-file ca.pem",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 1 {
				return fmt.Errorf("takes at most one FILE (none or -: standard input), got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			return exitWith(send(o, args, stdout, stderr))
		},
	}
	fs := cmd.Flags()
	o.conn = addConnFlags(fs, false)
	fs.BoolVar(&o.allowRejects, "allow-rejects", false, "exit 0 even when events were rejected or lines malformed")
	fs.BoolVar(&o.asJSON, "json", false, "print the summary as JSON")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress on stderr")
	fs.IntVar(&o.maxBatch, "batch", 500, "events per batch")
	return cmd
}

// send replays a JSONL file of events (nudge.v1.Event JSON, one a line)
// through the Publisher: batched, re-sent after reconnects, exactly once in
// effect thanks to the event ids. Re-feeding a backlog is safe.
func send(o sendOptions, pos []string, stdout, stderr io.Writer) int {
	in := os.Stdin
	name := "stdin"
	if len(pos) == 1 && pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			fmt.Fprintln(stderr, "nudgectl send:", err)
			return 1
		}
		defer f.Close()
		in, name = f, pos[0]
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	c, err := o.conn.dial()
	if err != nil {
		return dialFailed(stderr, "nudgectl send", err)
	}
	defer c.Close()
	var mu sync.Mutex
	var rejects []string // the first few, for the summary
	pub := c.NewPublisher(client.MaxBatch(o.maxBatch),
		client.OnResult(func(r *nudgev1.EventResult) {
			if r.GetStatus() == nudgev1.EventStatus_EVENT_STATUS_REJECTED {
				mu.Lock()
				if len(rejects) < 10 {
					rejects = append(rejects, fmt.Sprintf("event %s rejected: %s", r.GetEventId(), r.GetReason()))
				}
				mu.Unlock()
			}
		}),
		client.OnError(func(ev *nudgev1.Event, err error) {
			if refusedCredentials(err) {
				return // said once at the end, not for every event
			}
			mu.Lock()
			if len(rejects) < 10 {
				rejects = append(rejects, fmt.Sprintf("event %s failed: %v", ev.GetEventId(), err))
			}
			mu.Unlock()
		}))

	start := time.Now()
	sum := sendSummary{}
	prog := newSendProgress(stderr, in, name, o.quiet)
	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				prog.update(pub.Stats(), time.Since(start))
			}
		}
	}()

	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() && ctx.Err() == nil {
		sum.Lines++
		line := sc.Bytes()
		prog.read(len(line) + 1) // and its newline
		if len(trimSpace(line)) == 0 {
			continue
		}
		ev := &nudgev1.Event{}
		if err := protojson.Unmarshal(line, ev); err != nil {
			sum.Malformed++
			prog.printf("%s:%d: malformed event: %v\n", name, sum.Lines, err)
			continue
		}
		if err := pub.Publish(ctx, ev); err != nil {
			if ctx.Err() != nil || !errors.Is(err, client.ErrInvalidEvent) {
				// Interrupted, or the publisher stopped for good (the
				// server refused the token): Close reports it.
				break
			}
			sum.Malformed++
			prog.printf("%s:%d: %v\n", name, sum.Lines, err)
		}
	}
	readErr := sc.Err()
	closeCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	closeErr := pub.Close(closeCtx)
	close(stopProgress)
	<-progressDone
	prog.finish(pub.Stats(), time.Since(start))

	st := pub.Stats()
	el := time.Since(start).Seconds()
	sum.Published, sum.Applied, sum.Duplicate, sum.Rejected, sum.Failed, sum.Resent = st.Published, st.Applied, st.Duplicate, st.Rejected, st.Failed, st.Resent
	sum.Seconds, sum.PerSecond = el, float64(st.Acked)/el
	for _, r := range rejects {
		fmt.Fprintln(stderr, r)
	}
	if o.asJSON {
		b, _ := json.Marshal(sum)
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintf(stdout, "%s: %d lines, %d events sent: %d applied, %d duplicate, %d rejected, %d failed, %d malformed lines; %.1f s, %.0f events/s\n",
			name, sum.Lines, sum.Published, sum.Applied, sum.Duplicate, sum.Rejected, sum.Failed, sum.Malformed, sum.Seconds, sum.PerSecond)
	}
	switch {
	case refusedCredentials(closeErr):
		fmt.Fprintln(stderr, "nudgectl send:", o.conn.Describe(closeErr))
		return 1
	case readErr != nil:
		fmt.Fprintf(stderr, "nudgectl send: reading %s: %v\n", name, readErr)
		return 1
	case closeErr != nil || ctx.Err() != nil:
		fmt.Fprintln(stderr, "nudgectl send: not every event was acknowledged; sending the file again is safe (duplicates are detected)")
		return 1
	case st.Failed > 0:
		return 1
	case (sum.Rejected > 0 || sum.Malformed > 0) && !o.allowRejects:
		return 1
	}
	return 0
}

// refusedCredentials reports whether err is the server refusing the
// publisher's token (the publisher stops for good then).
func refusedCredentials(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return true
	}
	return false
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
