package server_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// panickyStore panics on user "boom" and behaves otherwise.
func panickyStore() *fakeStore {
	return &fakeStore{
		apply: func(_ context.Context, users []userEvents, step profile.Step) []userOutcome {
			if users[0].UserID == "boom" {
				panic("apply: boom")
			}
			return stepAll(users, step)
		},
		get: func(_ context.Context, userID string) (*profile.Profile, error) {
			if userID == "boom" {
				panic("get: boom")
			}
			return nil, profile.ErrNotFound
		},
		del: func(_ context.Context, userID string) (profile.DeleteResult, error) {
			if userID == "boom" {
				panic("delete: boom")
			}
			return profile.DeleteResult{}, nil
		},
	}
}

// TestPanicRecovery: a panicking handler, unary or streaming, answers
// Internal, its stack goes to the log (not to the caller), and the server
// keeps serving.
func TestPanicRecovery(t *testing.T) {
	var logs logBuffer
	h := start(t, panickyStore(), server.Config{Logger: logs.logger(), Outbox: fakeOutbox{}})
	calls := []struct {
		name string
		call func(ctx context.Context, user string) error
	}{
		{"Publish", func(ctx context.Context, user string) error {
			_, err := h.ingest.Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{ev("e1", user, "view", "", now)}})
			return err
		}},
		{"GetDecision", func(ctx context.Context, user string) error {
			_, err := h.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: user, Channel: "sms"})
			return err
		}},
		{"GetProfile", func(ctx context.Context, user string) error {
			_, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: user})
			if user != "boom" && status.Code(err) == codes.NotFound { // the fake's answer
				return nil
			}
			return err
		}},
		{"DeleteProfile", func(ctx context.Context, user string) error {
			_, err := h.profiles.DeleteProfile(ctx, &nudgev1.DeleteProfileRequest{UserId: user})
			return err
		}},
		{"Subscribe", func(ctx context.Context, group string) error { // a streaming handler
			stream, err := nudgev1.NewActionServiceClient(h.conn).Subscribe(ctx, &nudgev1.SubscribeRequest{Group: group})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			if group != "boom" && status.Code(err) == codes.Unavailable { // the fake's answer
				return nil
			}
			return err
		}},
	}
	panics := func() int {
		n := 0
		for _, e := range logs.entries(t) {
			if stack, _ := e["stack"].(string); e["msg"] == "panic in handler" && strings.Contains(stack, "goroutine ") {
				n++
			}
		}
		return n
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			before := panics()
			err := c.call(callCtx(t), "boom")
			wantCode(t, err, codes.Internal, "recovered from a panic")
			if strings.Contains(status.Convert(err).Message(), "goroutine") {
				t.Errorf("the caller gets the stack: %q", status.Convert(err).Message())
			}
			if got := panics(); got != before+1 {
				t.Errorf("%d new panic lines with a stack, want 1; log:\n%s", got-before, logs.String())
			}
			if err := c.call(callCtx(t), "u1"); err != nil {
				t.Fatalf("call after the panic: %v", err)
			}
		})
	}
}

// TestStreamPanicRecovery: a panic in a stream's batch worker (outside the
// interceptor's reach) ends that stream with Internal; the server and other
// streams keep serving.
func TestStreamPanicRecovery(t *testing.T) {
	var logs logBuffer
	h := start(t, panickyStore(), server.Config{Logger: logs.logger()})
	other, err := h.ingest.Stream(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := h.ingest.Stream(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&nudgev1.StreamRequest{Seq: 1, Events: []*nudgev1.Event{ev("e1", "boom", "view", "", now)}}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.Internal, "recovered from a panic")
	if log := logs.String(); !strings.Contains(log, `"msg":"panic in ingest batch","panic":"apply: boom","stack":"goroutine `) {
		t.Errorf("no panic line with its stack:\n%s", log)
	}

	if err := other.Send(&nudgev1.StreamRequest{Seq: 7, Events: []*nudgev1.Event{ev("e2", "u1", "view", "", now)}}); err != nil {
		t.Fatal(err)
	}
	resp, err := other.Recv()
	if err != nil || resp.GetSeq() != 7 {
		t.Fatalf("other stream after the panic: %v, %v", resp, err)
	}
	if err := other.CloseSend(); err != nil {
		t.Fatal(err)
	}
}

// TestStepPanicInStore: a step that panics inside the real store's
// per-user goroutines becomes Internal, not a crash, and the stack stays in
// the server's log rather than the client's message.
func TestStepPanicInStore(t *testing.T) {
	store := redisStore(t)
	h := start(t, panicStepStore{store}, server.Config{})
	_, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		ev("e1", "fine", "view", "", now), ev("e2", "boom", "view", "", now),
	}})
	wantCode(t, err, codes.Internal, "step panicked")
	if st, _ := status.FromError(err); strings.Contains(st.Message(), "goroutine") {
		t.Errorf("the client's message carries a stack: %q", st.Message())
	}
	if _, err := store.Get(callCtx(t), "boom"); !errors.Is(err, profile.ErrNotFound) {
		t.Errorf("the panicking user was written: %v", err)
	}
}

// panicStepStore wraps the store's step so it panics on user "boom".
type panicStepStore struct{ *redisstore.Store }

func (s panicStepStore) Apply(ctx context.Context, events []profile.Event, step profile.Step) profile.BatchOutcome {
	return s.Store.Apply(ctx, events, func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		if events[0].UserID == "boom" {
			panic("step: boom")
		}
		return step(p, events, now)
	})
}

func TestHealth(t *testing.T) {
	h := start(t, &fakeStore{}, server.Config{})
	checkHealth(t, h, healthpb.HealthCheckResponse_SERVING)
	_, err := h.health.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: "nudge.v1.NoSuchService"})
	wantCode(t, err, codes.NotFound, "unknown service")
	h.srv.Drain()
	checkHealth(t, h, healthpb.HealthCheckResponse_NOT_SERVING)
}

func TestReflection(t *testing.T) {
	h := start(t, &fakeStore{}, server.Config{})
	stream, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(callCtx(t))
	if err != nil {
		t.Fatalf("ServerReflectionInfo: %v", err)
	}
	ask := func(req *reflectionpb.ServerReflectionRequest) *reflectionpb.ServerReflectionResponse {
		t.Helper()
		if err := stream.Send(req); err != nil {
			t.Fatalf("Send: %v", err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if e := resp.GetErrorResponse(); e != nil {
			t.Fatalf("reflection error %d: %s", e.GetErrorCode(), e.GetErrorMessage())
		}
		return resp
	}

	resp := ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"nudge.v1.IngestService", "nudge.v1.DecisionService", "nudge.v1.ProfileService", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, without %s", names, want)
		}
	}

	// A client such as grpcurl also needs the descriptors, imports included.
	for _, svc := range []string{"nudge.v1.IngestService", "nudge.v1.DecisionService", "nudge.v1.ProfileService"} {
		resp := ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: svc}})
		if len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
			t.Errorf("no file descriptor for %s", svc)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
}
