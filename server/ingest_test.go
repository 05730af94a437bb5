package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// mixedBatch exercises every per-event outcome, users interleaved. u1's
// second view within 30 minutes (e2) fires viewed-twice.
func mixedBatch() []*nudgev1.Event {
	noTime := ev("r3", "u2", "view", "", now)
	noTime.OccurredAt = nil
	twoBad := ev("", "u2", "view", "", now)
	twoBad.Value = math.NaN()
	return []*nudgev1.Event{
		ev("e1", "u1", "view", "phones", now.Add(-10*time.Minute)),
		ev("f1", "u2", "view", "", now.Add(-time.Minute)),
		ev("e1", "u1", "view", "phones", now.Add(-10*time.Minute)), // same id, same batch
		ev("e2", "u1", "view", "phones", now.Add(-5*time.Minute)),
		ev("r1", "", "view", "", now),
		ev("r2", "u2", "View", "", now),
		noTime,
		twoBad,
		ev("old", "u2", "view", "", now.Add(-91*24*time.Hour)),
		ev("future", "u2", "view", "", now.Add(time.Hour)),
	}
}

var mixedResults = []result{
	{id: "e1", status: applied, version: 1},
	{id: "f1", status: applied, version: 1},
	{id: "e1", status: duplicate, version: 1},
	{id: "e2", status: applied, version: 1},
	{id: "r1", status: rejected, reason: "user_id: value is required [required]"},
	{id: "r2", status: rejected, reason: "type: does not match regex pattern `^[a-z][a-z0-9_.-]*$` [string.pattern]"},
	{id: "r3", status: rejected, reason: "occurred_at: value is required [required]"},
	{id: "", status: rejected, reason: "event_id: value is required [required]; value: must be finite [double.finite]"},
	{id: "old", status: rejected, reason: "older than the retention"},
	{id: "future", status: rejected, reason: "in the future"},
}

// checkViewAction checks the one action of u1's batch: viewed-twice, fired
// by e2.
func checkViewAction(t *testing.T, actions []*nudgev1.Action) {
	t.Helper()
	if len(actions) != 1 {
		t.Fatalf("got %d actions, want 1: %v", len(actions), actions)
	}
	a := actions[0]
	want := &nudgev1.Action{
		ActionId:    profile.ActionID("u1", "e2", "viewed-twice"),
		UserId:      "u1",
		TriggerId:   "viewed-twice",
		Channel:     "sms",
		Template:    "view_nudge",
		Payload:     map[string]string{"kind": "views", "category": "phones"},
		TriggeredAt: timestamppb.New(now.Add(-5 * time.Minute)),
		EventId:     "e2",
		// Every action carries the version of the rules that fired it.
		RulesVersion: testRulesVersion(t),
	}
	if !proto.Equal(a, want) {
		t.Errorf("action = %v, want %v", a, want)
	}
}

func TestPublish(t *testing.T) {
	h := start(t, redisStore(t), serverConfig())
	ctx := callCtx(t)

	resp, err := h.ingest.Publish(ctx, &nudgev1.PublishRequest{Events: mixedBatch()})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	checkResults(t, resp.GetResults(), mixedResults)
	checkViewAction(t, resp.GetActions())
	// The rejection reason names the field relative to the event, never
	// "events[4].user_id".
	if r := resp.GetResults()[4].GetReason(); r != "user_id: value is required [required]" {
		t.Errorf("reason = %q", r)
	}

	// Re-sending the batch is safe: everything applied is a duplicate now,
	// no version moves and no trigger fires again.
	resp, err = h.ingest.Publish(ctx, &nudgev1.PublishRequest{Events: mixedBatch()})
	if err != nil {
		t.Fatalf("Publish again: %v", err)
	}
	again := slices.Clone(mixedResults)
	for i := range again[:4] {
		again[i].status = duplicate
	}
	checkResults(t, resp.GetResults(), again)
	if len(resp.GetActions()) != 0 {
		t.Errorf("re-sent batch fired %v", resp.GetActions())
	}

	// A later batch moves u1 to version 2.
	resp, err = h.ingest.Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		ev("e3", "u1", "click", "", now),
	}})
	if err != nil {
		t.Fatalf("Publish e3: %v", err)
	}
	checkResults(t, resp.GetResults(), []result{{id: "e3", status: applied, version: 2}})
}

// serverConfig is the default configuration with a decision budget generous
// enough that a miniredis read never falls back: budgets have their own
// tests with fake stores.
func serverConfig() server.Config {
	return server.Config{DefaultBudget: 5 * time.Second, MaxBudget: 5 * time.Second}
}

func TestPublishOnlyRejectedEventsSkipsTheStore(t *testing.T) {
	h := start(t, &fakeStore{}, serverConfig()) // any Apply call would fail the batch
	resp, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		ev("r1", "", "view", "", now),
		ev("r2", "bad user", "view", "", now),
	}})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	checkResults(t, resp.GetResults(), []result{
		{id: "r1", status: rejected, reason: "user_id: value is required [required]"},
		{id: "r2", status: rejected, reason: "user_id: does not match regex pattern"},
	})
}

func TestStream(t *testing.T) {
	h := start(t, redisStore(t), serverConfig())
	stream, err := h.ingest.Stream(callCtx(t))
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	batches := []*nudgev1.StreamRequest{
		{Seq: 10, Events: []*nudgev1.Event{
			ev("e1", "u1", "view", "phones", now.Add(-10*time.Minute)),
			ev("e2", "u1", "view", "phones", now.Add(-5*time.Minute)),
		}},
		{Seq: 11, Events: []*nudgev1.Event{ev("f1", "u2", "view", "", now.Add(-time.Minute))}},
		{Seq: 12, Events: []*nudgev1.Event{
			ev("g1", "", "view", "", now),
			ev("g2", "u3", "view", "", now),
			ev("g2", "u3", "view", "", now),
		}},
	}
	for _, b := range batches {
		if err := stream.Send(b); err != nil {
			t.Fatalf("Send %d: %v", b.GetSeq(), err)
		}
	}
	// Closing right away must not cut the batches in flight.
	if err := stream.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	got := make(map[uint64]*nudgev1.StreamResponse)
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %d responses: %v", len(got), err)
		}
		if _, dup := got[resp.GetSeq()]; dup {
			t.Fatalf("second response for seq %d", resp.GetSeq())
		}
		got[resp.GetSeq()] = resp
	}
	if seqs := slices.Sorted(maps.Keys(got)); !slices.Equal(seqs, []uint64{10, 11, 12}) {
		t.Fatalf("responses for seqs %v, want 10, 11, 12", seqs)
	}
	checkResults(t, got[10].GetResults(), []result{
		{id: "e1", status: applied, version: 1},
		{id: "e2", status: applied, version: 1},
	})
	checkViewAction(t, got[10].GetActions())
	checkResults(t, got[11].GetResults(), []result{{id: "f1", status: applied, version: 1}})
	checkResults(t, got[12].GetResults(), []result{
		{id: "g1", status: rejected, reason: "user_id: value is required [required]"},
		{id: "g2", status: applied, version: 1},
		{id: "g2", status: duplicate, version: 1},
	})
	for _, seq := range []uint64{11, 12} {
		if a := got[seq].GetActions(); len(a) != 0 {
			t.Errorf("seq %d: unexpected actions %v", seq, a)
		}
	}
}

// TestStreamDeduplicatesAcrossBatches sends one batch at a time, so the
// order of the user's batches is known.
func TestStreamDeduplicatesAcrossBatches(t *testing.T) {
	h := start(t, redisStore(t), serverConfig())
	stream, err := h.ingest.Stream(callCtx(t))
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	steps := []struct {
		events []*nudgev1.Event
		want   []result
	}{
		{[]*nudgev1.Event{ev("e1", "u1", "view", "", now)}, []result{{id: "e1", status: applied, version: 1}}},
		{[]*nudgev1.Event{ev("e1", "u1", "view", "", now), ev("e2", "u1", "click", "", now)},
			[]result{{id: "e1", status: duplicate, version: 2}, {id: "e2", status: applied, version: 2}}},
		{[]*nudgev1.Event{ev("e2", "u1", "click", "", now)}, []result{{id: "e2", status: duplicate, version: 2}}},
	}
	for i, s := range steps {
		seq := uint64(i + 1)
		if err := stream.Send(&nudgev1.StreamRequest{Seq: seq, Events: s.events}); err != nil {
			t.Fatalf("Send %d: %v", seq, err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv %d: %v", seq, err)
		}
		if resp.GetSeq() != seq {
			t.Fatalf("got seq %d, want %d", resp.GetSeq(), seq)
		}
		checkResults(t, resp.GetResults(), s.want)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: got %v, want io.EOF", err)
	}
}

func manyEvents(n int) []*nudgev1.Event {
	events := make([]*nudgev1.Event, n)
	for i := range events {
		events[i] = ev(fmt.Sprint("e", i), fmt.Sprint("u", i%7), "view", "", now)
	}
	return events
}

func TestInvalidBatch(t *testing.T) {
	tests := []struct {
		name   string
		events []*nudgev1.Event
		msg    string
	}{
		{"empty", nil, "events: must contain at least 1 item(s) [repeated.min_items]"},
		{"5001 events", manyEvents(5001), "events: must contain no more than 5000 item(s) [repeated.max_items]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, &fakeStore{apply: func(_ context.Context, users []userEvents, step profile.Step) []userOutcome {
				return stepAll(users, step)
			}}, server.Config{})

			t.Run("Publish", func(t *testing.T) {
				_, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: tt.events})
				wantCode(t, err, codes.InvalidArgument, tt.msg)
			})

			t.Run("Stream", func(t *testing.T) {
				stream, err := h.ingest.Stream(callCtx(t))
				if err != nil {
					t.Fatalf("Stream: %v", err)
				}
				// The good batch before the bad one is answered; the bad
				// one ends the stream.
				if err := stream.Send(&nudgev1.StreamRequest{Seq: 1, Events: manyEvents(3)}); err != nil {
					t.Fatalf("Send 1: %v", err)
				}
				if err := stream.Send(&nudgev1.StreamRequest{Seq: 2, Events: tt.events}); err != nil {
					t.Fatalf("Send 2: %v", err)
				}
				resp, err := stream.Recv()
				if err != nil {
					t.Fatalf("Recv: %v", err)
				}
				if resp.GetSeq() != 1 {
					t.Fatalf("answered seq %d, want 1", resp.GetSeq())
				}
				_, err = stream.Recv()
				wantCode(t, err, codes.InvalidArgument, tt.msg)
			})
		})
	}
}

func TestMaxBatchIsAccepted(t *testing.T) {
	h := start(t, &fakeStore{apply: func(_ context.Context, users []userEvents, step profile.Step) []userOutcome {
		return stepAll(users, step)
	}}, server.Config{})
	resp, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: manyEvents(5000)})
	if err != nil {
		t.Fatalf("Publish 5000 events: %v", err)
	}
	if n := len(resp.GetResults()); n != 5000 {
		t.Fatalf("got %d results", n)
	}
	for i, r := range resp.GetResults() {
		if r.GetStatus() != applied || r.GetEventId() != fmt.Sprint("e", i) {
			t.Fatalf("result %d = %v", i, r)
		}
	}
}

// storeFailures are the Apply errors a batch can end with, and their codes.
var storeFailures = []struct {
	name string
	err  error
	code codes.Code
}{
	{"unavailable", fmt.Errorf("user %q: %w: dial tcp: refused", "u1", profile.ErrUnavailable), codes.Unavailable},
	{"conflict", fmt.Errorf("user %q: 64 attempts: %w", "u1", profile.ErrConflict), codes.Aborted},
	{"deadline", fmt.Errorf("user %q: %w", "u1", context.DeadlineExceeded), codes.DeadlineExceeded},
	{"unknown", errors.New("disk on fire"), codes.Internal},
}

func TestPublishStoreFailure(t *testing.T) {
	for _, tt := range storeFailures {
		t.Run(tt.name, func(t *testing.T) {
			// u2 commits, u1 fails: the batch fails as a whole, and
			// re-sending it is safe (u2's events answer DUPLICATE).
			store := &fakeStore{apply: func(_ context.Context, users []userEvents, step profile.Step) []userOutcome {
				out := stepAll(users, step)
				for i, u := range users {
					if u.UserID == "u1" {
						out[i] = userOutcome{Err: tt.err}
					}
				}
				return out
			}}
			h := start(t, store, server.Config{})
			_, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: []*nudgev1.Event{
				ev("e1", "u1", "view", "", now),
				ev("e2", "u2", "view", "", now),
			}})
			// The message keeps the cause, and names the user by its hash
			// only (redactStatus: ids stay out of RPC spans).
			wantCode(t, err, tt.code, strings.TrimPrefix(tt.err.Error(), `user "u1": `))
			if strings.Contains(status.Convert(err).Message(), `"u1"`) {
				t.Errorf("the status names the user in clear: %v", err)
			}
		})
	}
}

func TestStreamStoreFailure(t *testing.T) {
	for _, tt := range storeFailures {
		t.Run(tt.name, func(t *testing.T) {
			store := &fakeStore{apply: func(context.Context, []userEvents, profile.Step) []userOutcome {
				return []userOutcome{{Err: tt.err}}
			}}
			h := start(t, store, server.Config{})
			stream, err := h.ingest.Stream(callCtx(t))
			if err != nil {
				t.Fatalf("Stream: %v", err)
			}
			if err := stream.Send(&nudgev1.StreamRequest{Seq: 1, Events: []*nudgev1.Event{ev("e1", "u1", "view", "", now)}}); err != nil {
				t.Fatalf("Send: %v", err)
			}
			_, err = stream.Recv()
			// The message keeps the cause, and names the user by its hash
			// only (redactStatus: ids stay out of RPC spans).
			wantCode(t, err, tt.code, strings.TrimPrefix(tt.err.Error(), `user "u1": `))
			if strings.Contains(status.Convert(err).Message(), `"u1"`) {
				t.Errorf("the status names the user in clear: %v", err)
			}
		})
	}
}
