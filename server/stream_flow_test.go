package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// The tests in this file run the real server, client and a fake store in a
// synctest bubble. synctest.Wait returns once every goroutine of the bubble
// is blocked, which turns "the server has not started the third batch" into
// an observation instead of a guess. Time is virtual: a timeout passes as
// soon as the bubble deadlocks. synctest.Test also fails if a goroutine the
// test started is still blocked when it ends.

type ingestStream = grpc.BidiStreamingClient[nudgev1.StreamRequest, nudgev1.StreamResponse]

func openStream(t *testing.T, h *harness) ingestStream {
	t.Helper()
	stream, err := h.ingest.Stream(callCtx(t))
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	return stream
}

// sendView sends a batch of one view by user.
func sendView(t *testing.T, stream ingestStream, seq uint64, user string) {
	t.Helper()
	req := &nudgev1.StreamRequest{Seq: seq, Events: []*nudgev1.Event{ev(fmt.Sprint("e", seq), user, "view", "", now)}}
	if err := stream.Send(req); err != nil {
		t.Fatalf("Send %d: %v", seq, err)
	}
}

func recvResponse(t *testing.T, stream ingestStream) *nudgev1.StreamResponse {
	t.Helper()
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return resp
}

// checkApplied checks a response to sendView.
func checkApplied(t *testing.T, resp *nudgev1.StreamResponse, seq uint64) {
	t.Helper()
	if resp.GetSeq() != seq {
		t.Fatalf("got response for seq %d, want %d", resp.GetSeq(), seq)
	}
	checkResults(t, resp.GetResults(), []result{{id: fmt.Sprint("e", seq), status: applied, version: 1}})
}

// releaseOne lets one blocked Apply call return.
func releaseOne(t *testing.T, store *blockingStore) {
	t.Helper()
	select {
	case store.release <- struct{}{}:
	case <-time.After(waitLimit):
		t.Fatal("no Apply call to release")
	}
}

func noneEntered(t *testing.T, store *blockingStore, why string) {
	t.Helper()
	synctest.Wait()
	if n := len(store.entered); n != 0 {
		t.Fatalf("%d more Apply calls started; want none (%s)", n, why)
	}
}

func TestStreamBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newBlockingStore()
		h := start(t, store, server.Config{MaxInFlight: 2})
		stream := openStream(t, h)
		for seq := range uint64(3) { // seq n is user un
			sendView(t, stream, seq+1, fmt.Sprint("u", seq+1))
		}

		// Two batches start; the server stops reading the stream.
		waiting := map[string]bool{"u1": true, "u2": true, "u3": true}
		delete(waiting, receive(t, store.entered, "first Apply"))
		delete(waiting, receive(t, store.entered, "second Apply"))
		noneEntered(t, store, "MaxInFlight is 2")
		if len(waiting) != 1 {
			t.Fatalf("the same batch started twice; not started: %v", waiting)
		}

		// Releasing one answers it, and only then does the third start.
		releaseOne(t, store)
		first := recvResponse(t, stream)
		if waiting[fmt.Sprint("u", first.GetSeq())] {
			t.Fatalf("answered seq %d, which had not started", first.GetSeq())
		}
		checkApplied(t, first, first.GetSeq())
		third := receive(t, store.entered, "third Apply")
		if !waiting[third] {
			t.Fatalf("third Apply is for %s, want the batch that waited (%v)", third, waiting)
		}
		noneEntered(t, store, "all batches started")

		releaseOne(t, store)
		releaseOne(t, store)
		answered := map[uint64]bool{first.GetSeq(): true}
		for range 2 {
			resp := recvResponse(t, stream)
			if answered[resp.GetSeq()] {
				t.Fatalf("seq %d answered twice", resp.GetSeq())
			}
			answered[resp.GetSeq()] = true
			checkApplied(t, resp, resp.GetSeq())
		}
		if len(answered) != 3 {
			t.Fatalf("answered %v, want seqs 1, 2, 3", answered)
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatalf("CloseSend: %v", err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after CloseSend: got %v, want io.EOF", err)
		}
		if m := store.maxActive(); m != 2 {
			t.Fatalf("at most %d Apply calls ran at once, want 2", m)
		}
	})
}

// TestStreamFailureAnswersOthersInFlight fails one batch while another is in
// flight: the other is still answered, nothing new starts, and then the
// stream ends with the failure's code.
func TestStreamFailureAnswersOthersInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		entered := make(chan string, 8)
		release := map[string]chan struct{}{"bad": make(chan struct{}), "good": make(chan struct{})}
		store := &fakeStore{apply: func(ctx context.Context, users []userEvents, step profile.Step) []userOutcome {
			u := users[0].UserID
			entered <- u
			select {
			case <-release[u]:
			case <-ctx.Done():
				return failAll(users, ctx.Err())
			}
			if u == "bad" {
				return failAll(users, fmt.Errorf("user %q: %w: connection refused", u, profile.ErrUnavailable))
			}
			return stepAll(users, step)
		}}
		h := start(t, store, server.Config{})
		stream := openStream(t, h)
		sendView(t, stream, 1, "bad")
		sendView(t, stream, 2, "good")
		receive(t, entered, "first Apply")
		receive(t, entered, "second Apply")

		close(release["bad"])
		synctest.Wait() // the server has seen the failure
		sendView(t, stream, 3, "good")
		synctest.Wait()
		if n := len(entered); n != 0 {
			t.Fatalf("%d batches started after the stream failed", n)
		}

		close(release["good"])
		checkApplied(t, recvResponse(t, stream), 2)
		_, err := stream.Recv()
		wantCode(t, err, codes.Unavailable, "connection refused")
	})
}

func checkHealth(t *testing.T, h *harness, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	for _, svc := range []string{"", "nudge.v1.IngestService", "nudge.v1.DecisionService", "nudge.v1.ProfileService"} {
		resp, err := h.health.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatalf("health %q: %v", svc, err)
		}
		if resp.GetStatus() != want {
			t.Errorf("health %q = %s, want %s", svc, resp.GetStatus(), want)
		}
	}
}

func TestDrain(t *testing.T) {
	t.Run("in flight", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := newBlockingStore()
			h := start(t, store, server.Config{})
			checkHealth(t, h, healthpb.HealthCheckResponse_SERVING)
			stream := openStream(t, h)
			sendView(t, stream, 1, "u1")
			receive(t, store.entered, "Apply")

			h.srv.Drain()
			h.srv.Drain() // idempotent
			// Let the stream see the drain before the next batch arrives:
			// Stream's select has no priority, so a batch that is already
			// waiting when the drain starts may still be taken.
			synctest.Wait()
			checkHealth(t, h, healthpb.HealthCheckResponse_NOT_SERVING)
			sendView(t, stream, 2, "u2")
			noneEntered(t, store, "the server is draining")

			releaseOne(t, store)
			checkApplied(t, recvResponse(t, stream), 1)
			_, err := stream.Recv()
			wantCode(t, err, codes.Unavailable, "shutting down")
		})
	})

	t.Run("idle", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := newBlockingStore()
			h := start(t, store, server.Config{})
			stream := openStream(t, h)
			sendView(t, stream, 1, "u1")
			releaseOne(t, store)
			checkApplied(t, recvResponse(t, stream), 1)

			h.srv.Drain()
			_, err := stream.Recv()
			wantCode(t, err, codes.Unavailable, "shutting down")
		})
	})
}

func TestShutdown(t *testing.T) {
	t.Run("graceful", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := newBlockingStore()
			h := start(t, store, server.Config{})
			stream := openStream(t, h)
			sendView(t, stream, 1, "u1")
			receive(t, store.entered, "Apply")

			done := make(chan struct{})
			go func() {
				defer close(done)
				h.srv.Shutdown(h.grpc, time.Minute)
			}()
			synctest.Wait()
			select {
			case <-done:
				t.Fatal("Shutdown returned with a batch in flight")
			default:
			}

			releaseOne(t, store)
			checkApplied(t, recvResponse(t, stream), 1)
			_, err := stream.Recv()
			wantCode(t, err, codes.Unavailable, "shutting down")
			receive(t, done, "Shutdown to return")
		})
	})

	t.Run("stuck stream", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := newBlockingStore() // never released
			h := start(t, store, server.Config{})
			stream := openStream(t, h)
			sendView(t, stream, 1, "u1")
			receive(t, store.entered, "Apply")

			done := make(chan struct{})
			go func() {
				defer close(done)
				h.srv.Shutdown(h.grpc, 200*time.Millisecond)
			}()
			receive(t, done, "Shutdown to give up on the stuck stream")
			// The stream was cut, not ended cleanly.
			if _, err := stream.Recv(); err == nil || errors.Is(err, io.EOF) {
				t.Fatalf("Recv on a cut stream: got %v, want an error status", err)
			}
		})
	})
}

// TestStreamsShareInFlightEvents: MaxInFlightEvents bounds the events in
// work over all streams together (MaxInFlight bounds one stream's
// batches): with room for 2 one-event batches, 3 streams of 2 batches each
// get 2 into Apply, and the others start only as those finish.
func TestStreamsShareInFlightEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newBlockingStore()
		h := start(t, store, server.Config{MaxInFlight: 8, MaxInFlightEvents: 2})
		const streams, perStream = 3, 2
		var ss []nudgev1.IngestService_StreamClient
		for s := range streams {
			stream := openStream(t, h)
			ss = append(ss, stream)
			for b := range perStream {
				seq := uint64(s*perStream + b + 1)
				sendView(t, stream, seq, fmt.Sprint("u", seq))
			}
		}
		receive(t, store.entered, "first Apply")
		receive(t, store.entered, "second Apply")
		noneEntered(t, store, "MaxInFlightEvents is 2, over all streams")
		for started := 2; started < streams*perStream; started++ {
			releaseOne(t, store)
			receive(t, store.entered, "the next waiting batch")
			noneEntered(t, store, "one finished, one started")
		}
		releaseOne(t, store)
		releaseOne(t, store)
		for _, stream := range ss {
			for range perStream {
				resp := recvResponse(t, stream)
				checkApplied(t, resp, resp.GetSeq())
			}
		}
		if m := store.maxActive(); m != 2 {
			t.Fatalf("at most %d Apply calls ran at once, want 2", m)
		}
	})
}

// TestStreamIdle: an ingest stream without a batch for StreamIdle, and
// none in work, ends with Unavailable; a batch in work keeps it open.
func TestStreamIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newBlockingStore()
		h := start(t, store, server.Config{StreamIdle: 3 * time.Second})
		stream := openStream(t, h)
		sendView(t, stream, 1, "u1")
		receive(t, store.entered, "Apply")
		time.Sleep(5 * time.Second) // idle, but a batch is in work
		releaseOne(t, store)
		checkApplied(t, recvResponse(t, stream), 1)

		start := time.Now()
		_, err := stream.Recv()
		wantCode(t, err, codes.Unavailable, "no batch on this stream for 3s")
		if waited := time.Since(start); waited != 3*time.Second {
			t.Errorf("ended after %v of idleness, want 3s", waited)
		}
	})
}

// TestHealthFollowsTheStore: with the store unreachable, the services that
// need it report NOT_SERVING while decisions (which degrade) and the
// server as a whole stay SERVING; a drain wins over a store that comes
// back.
func TestHealthFollowsTheStore(t *testing.T) {
	h := start(t, okStore(), server.Config{})
	want := func(svc string, st healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		resp, err := h.health.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != st {
			t.Errorf("health %q = %v, %v; want %s", svc, resp.GetStatus(), err, st)
		}
	}
	serving, notServing := healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING
	h.srv.SetStoreReachable(false)
	for _, svc := range []string{"nudge.v1.IngestService", "nudge.v1.ProfileService", "nudge.v1.ActionService"} {
		want(svc, notServing)
	}
	for _, svc := range []string{"", "nudge.v1.DecisionService", "nudge.v1.AdminService"} {
		want(svc, serving)
	}
	h.srv.SetStoreReachable(true)
	want("nudge.v1.IngestService", serving)
	h.srv.Drain()
	h.srv.SetStoreReachable(true)
	want("nudge.v1.IngestService", notServing)
	want("", notServing)
}
