package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/internal/clientflags"
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

// send replays a JSONL file of events (nudge.v1.Event JSON, one a line)
// through the Publisher: batched, re-sent after reconnects, exactly once in
// effect thanks to the event ids. Re-feeding a backlog is safe.
func send(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nudgectl send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:7070", "nudged address")
	sec := clientflags.Register(fs, "ingest", os.Getenv)
	allowRejects := fs.Bool("allow-rejects", false, "exit 0 even when events were rejected or lines malformed")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	quiet := fs.Bool("quiet", false, "no progress line")
	maxBatch := fs.Int("batch", 500, "events per batch")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 1 {
		fmt.Fprintln(stderr, "usage: nudgectl send [FILE.jsonl] [--addr A] [--allow-rejects] [--json] [security flags: nudgectl help]   (no FILE or -: standard input)")
		return 2
	}
	in := io.Reader(os.Stdin)
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

	c, err := sec.Dial(*addr)
	if err != nil {
		return dialFailed(stderr, "nudgectl send", err)
	}
	defer c.Close()
	var mu sync.Mutex
	var rejects []string // the first few, for the summary
	pub := c.NewPublisher(client.MaxBatch(*maxBatch),
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
	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	go func() {
		defer close(progressDone)
		if *quiet {
			<-stopProgress
			return
		}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				st := pub.Stats()
				el := time.Since(start).Seconds()
				fmt.Fprintf(stderr, "sent %d  acked %d  applied %d  duplicate %d  rejected %d  %.0f events/s\n",
					st.Published, st.Acked, st.Applied, st.Duplicate, st.Rejected, float64(st.Acked)/el)
			}
		}
	}()

	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() && ctx.Err() == nil {
		sum.Lines++
		line := sc.Bytes()
		if len(trimSpace(line)) == 0 {
			continue
		}
		ev := &nudgev1.Event{}
		if err := protojson.Unmarshal(line, ev); err != nil {
			sum.Malformed++
			fmt.Fprintf(stderr, "%s:%d: malformed event: %v\n", name, sum.Lines, err)
			continue
		}
		if err := pub.Publish(ctx, ev); err != nil {
			if ctx.Err() != nil || !errors.Is(err, client.ErrInvalidEvent) {
				// Interrupted, or the publisher stopped for good (the
				// server refused the token): Close reports it.
				break
			}
			sum.Malformed++
			fmt.Fprintf(stderr, "%s:%d: %v\n", name, sum.Lines, err)
		}
	}
	readErr := sc.Err()
	closeCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	closeErr := pub.Close(closeCtx)
	close(stopProgress)
	<-progressDone

	st := pub.Stats()
	el := time.Since(start).Seconds()
	sum.Published, sum.Applied, sum.Duplicate, sum.Rejected, sum.Failed, sum.Resent = st.Published, st.Applied, st.Duplicate, st.Rejected, st.Failed, st.Resent
	sum.Seconds, sum.PerSecond = el, float64(st.Acked)/el
	for _, r := range rejects {
		fmt.Fprintln(stderr, r)
	}
	if *asJSON {
		b, _ := json.Marshal(sum)
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintf(stdout, "%s: %d lines, %d events sent: %d applied, %d duplicate, %d rejected, %d failed, %d malformed lines; %.1f s, %.0f events/s\n",
			name, sum.Lines, sum.Published, sum.Applied, sum.Duplicate, sum.Rejected, sum.Failed, sum.Malformed, sum.Seconds, sum.PerSecond)
	}
	switch {
	case refusedCredentials(closeErr):
		fmt.Fprintln(stderr, "nudgectl send:", sec.Describe(closeErr))
		return 1
	case readErr != nil:
		fmt.Fprintf(stderr, "nudgectl send: reading %s: %v\n", name, readErr)
		return 1
	case closeErr != nil || ctx.Err() != nil:
		fmt.Fprintln(stderr, "nudgectl send: not every event was acknowledged; sending the file again is safe (duplicates are detected)")
		return 1
	case st.Failed > 0:
		return 1
	case (sum.Rejected > 0 || sum.Malformed > 0) && !*allowRejects:
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
