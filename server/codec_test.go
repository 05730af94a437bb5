package server

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/internal/wiretest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The harness of the other server tests (harness_test.go) is in package
// server_test, which cannot reach wireCodec: these tests build their server
// here, the same way (Server.NewGRPCServer over bufconn), with the codec
// and its interceptors passed as options, which puts the interceptors
// after recovery and logging.

// wireServer is a Server on a memStore behind NewGRPCServer with the codec
// of failures, on bufconn.
type wireServer struct {
	grpc     *grpc.Server
	conn     *grpc.ClientConn
	failures *decodeFailures
	served   chan struct{}
}

// startWire starts a wireServer whose decode failure table holds capacity
// entries. It stops when the test ends.
func startWire(t *testing.T, capacity int) *wireServer {
	t.Helper()
	s := newFuzzServer(t, &memStore{now: func() time.Time { return fuzzNow }})
	failures := newDecodeFailures(capacity)
	opt, unary, stream := wireCodecOn(failures)
	g := s.NewGRPCServer(opt, grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream))
	lis := bufconn.Listen(1 << 20)
	w := &wireServer{grpc: g, failures: failures, served: make(chan struct{})}
	go func() {
		defer close(w.served)
		_ = g.Serve(lis) // returns when g stops
	}()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	w.conn = conn
	t.Cleanup(func() {
		_ = conn.Close()
		w.stop()
	})
	return w
}

// stop stops the server once every call has returned (idempotent).
func (w *wireServer) stop() {
	w.grpc.GracefulStop()
	<-w.served
}

// pending is the number of decode failures not yet checked.
func (w *wireServer) pending() int64 { return w.failures.live.Load() }

// invoke makes a unary call with body as the request bytes.
func (w *wireServer) invoke(ctx context.Context, method string, body []byte) ([]byte, error) {
	var out []byte
	err := w.conn.Invoke(ctx, method, &body, &out, grpc.ForceCodecV2(wiretest.RawCodec{}))
	return out, err
}

func codecCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if err == nil || !ok || st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("got %v, want %s containing %q", err, code, msg)
	}
}

// garbage are request bodies that are not valid protobuf wire format for
// any of the requests the tests send.
var garbage = []struct {
	name string
	body []byte
}{
	{"random bytes", []byte{0xff, 0xff, 0xff, 0xff, 0x0f}},
	{"length past the end", []byte("\x0a\x10ab")},
	// GetDecisionRequest.user_id; StreamRequest.events[0].event_id.
	{"string field not UTF-8", []byte("\x0a\x02\xff\xfe\x12\x04\x0a\x02\xff\xfe")},
	{"group never closed", []byte{0x0b}},
	{"field number zero", []byte{0x00, 0x01}},
	{"varint too long", []byte("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")},
}

func TestCodecUnaryGarbageIsInvalidArgument(t *testing.T) {
	w := startWire(t, maxUndecoded)
	ctx := codecCtx(t)
	for _, tc := range garbage {
		t.Run(tc.name, func(t *testing.T) {
			_, err := w.invoke(ctx, nudgev1.DecisionService_GetDecision_FullMethodName, tc.body)
			wantStatus(t, err, codes.InvalidArgument, "request is not a valid nudge.v1.GetDecisionRequest: ")
		})
	}
	// A body that decodes goes on to validation and the handler as before.
	_, err := w.invoke(ctx, nudgev1.DecisionService_GetDecision_FullMethodName, nil)
	wantStatus(t, err, codes.InvalidArgument, "user_id")
	out, err := w.invoke(ctx, nudgev1.DecisionService_GetDecision_FullMethodName,
		mustMarshal(t, &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "web"}))
	if err != nil {
		t.Fatalf("valid GetDecision: %v", err)
	}
	var resp nudgev1.GetDecisionResponse
	if err := proto.Unmarshal(out, &resp); err != nil || resp.GetDecision() == nil {
		t.Fatalf("valid GetDecision answered %v (%v)", &resp, err)
	}
	if n := w.pending(); n != 0 {
		t.Errorf("%d decode failures left in the table", n)
	}
}

func TestCodecStreamGarbageIsInvalidArgument(t *testing.T) {
	for _, tc := range garbage {
		t.Run(tc.name, func(t *testing.T) {
			w := startWire(t, maxUndecoded)
			ctx := codecCtx(t)
			st, err := w.conn.NewStream(ctx, &nudgev1.IngestService_ServiceDesc.Streams[0],
				nudgev1.IngestService_Stream_FullMethodName, grpc.ForceCodecV2(wiretest.RawCodec{}))
			if err != nil {
				t.Fatal(err)
			}
			// A valid batch first: the stream works and answers it.
			valid := mustMarshal(t, &nudgev1.StreamRequest{Seq: 1, Events: []*nudgev1.Event{{
				EventId: "e1", UserId: "u1", Type: "view", OccurredAt: timestamppb.New(fuzzNow),
			}}})
			if err := st.SendMsg(&valid); err != nil {
				t.Fatal(err)
			}
			var out []byte
			if err := st.RecvMsg(&out); err != nil {
				t.Fatalf("answer to the valid batch: %v", err)
			}
			var resp nudgev1.StreamResponse
			if err := proto.Unmarshal(out, &resp); err != nil || resp.GetSeq() != 1 || len(resp.GetResults()) != 1 ||
				resp.GetResults()[0].GetStatus() != nudgev1.EventStatus_EVENT_STATUS_APPLIED {
				t.Fatalf("answer to the valid batch: %v (%v)", &resp, err)
			}
			// Then garbage: the stream ends with InvalidArgument.
			body := tc.body
			if err := st.SendMsg(&body); err != nil {
				t.Fatal(err)
			}
			err = st.RecvMsg(&out)
			wantStatus(t, err, codes.InvalidArgument, "request is not a valid nudge.v1.StreamRequest: ")
			if n := w.pending(); n != 0 {
				t.Errorf("%d decode failures left in the table", n)
			}
		})
	}
}

// TestCodecConcurrentCalls mixes garbage and valid calls from several
// goroutines (for the race detector): each gets its own answer, and the
// table ends empty.
func TestCodecConcurrentCalls(t *testing.T) {
	w := startWire(t, maxUndecoded)
	ctx := codecCtx(t)
	valid := mustMarshal(t, &nudgev1.PublishRequest{Events: []*nudgev1.Event{{
		EventId: "e1", UserId: "u1", Type: "view", OccurredAt: timestamppb.New(fuzzNow),
	}}})
	var wg sync.WaitGroup
	errs := make(chan error, 8*40)
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				if (g+i)%2 == 0 {
					_, err := w.invoke(ctx, nudgev1.IngestService_Publish_FullMethodName, garbage[i%len(garbage)].body)
					if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument ||
						!strings.Contains(st.Message(), "nudge.v1.PublishRequest") {
						errs <- fmt.Errorf("garbage: %v", err)
					}
					continue
				}
				if _, err := w.invoke(ctx, nudgev1.IngestService_Publish_FullMethodName, valid); err != nil {
					errs <- fmt.Errorf("valid: %v", err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := w.pending(); n != 0 {
		t.Errorf("%d decode failures left in the table", n)
	}
}

// TestCodecUncheckedFailuresAreBounded takes the one path on which no
// interceptor checks a failure: a unary call whose garbage request is
// followed by a second message, which grpc refuses before the unary
// interceptor runs. The table keeps at most its capacity, and keeps
// answering garbage with InvalidArgument.
func TestCodecUncheckedFailuresAreBounded(t *testing.T) {
	const capacity = 2
	w := startWire(t, capacity)
	ctx := codecCtx(t)
	twoMessages := &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}
	for i := range 3 * capacity {
		st, err := w.conn.NewStream(ctx, twoMessages, nudgev1.DecisionService_GetDecision_FullMethodName, grpc.ForceCodecV2(wiretest.RawCodec{}))
		if err != nil {
			t.Fatal(err)
		}
		first, second := garbage[0].body, []byte(nil)
		if err := st.SendMsg(&first); err != nil {
			t.Fatal(err)
		}
		_ = st.SendMsg(&second) // may fail once the server has answered
		_ = st.CloseSend()
		var out []byte
		err = st.RecvMsg(&out)
		wantStatus(t, err, codes.Internal, "cardinality violation")
		if n, want := w.pending(), int64(min(i+1, capacity)); n != want {
			t.Fatalf("after %d unchecked failures: %d in the table, want %d", i+1, n, want)
		}
	}
	_, err := w.invoke(ctx, nudgev1.DecisionService_GetDecision_FullMethodName, garbage[1].body)
	wantStatus(t, err, codes.InvalidArgument, "request is not a valid nudge.v1.GetDecisionRequest")
}

// TestCodecServerStreamTakesFailureOnRecvError: a server-streaming call
// (health Watch) whose garbage request is followed by a second message
// fails in RecvMsg, after the codec recorded the garbage; the stream
// wrapper still takes the entry.
func TestCodecServerStreamTakesFailureOnRecvError(t *testing.T) {
	w := startWire(t, maxUndecoded)
	ctx := codecCtx(t)
	st, err := w.conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
		"/grpc.health.v1.Health/Watch", grpc.ForceCodecV2(wiretest.RawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	first, second := garbage[0].body, mustMarshal(t, &healthpb.HealthCheckRequest{})
	if err := st.SendMsg(&first); err != nil {
		t.Fatal(err)
	}
	_ = st.SendMsg(&second)
	_ = st.CloseSend()
	var out []byte
	if err := st.RecvMsg(&out); err == nil {
		t.Fatal("Watch with two requests succeeded")
	}
	w.stop() // the handler has returned, and with it RecvMsg
	if n := w.pending(); n != 0 {
		t.Errorf("%d decode failures left in the table", n)
	}
}

func TestDecodeFailures(t *testing.T) {
	// An op records failure n for msgs[msg] (take false), or takes msgs[msg]
	// and wants the failure named want ("" for none).
	type op struct {
		take bool
		msg  int
		want string
	}
	rec := func(msg int) op { return op{msg: msg} }
	take := func(msg int, want string) op { return op{take: true, msg: msg, want: want} }
	tests := []struct {
		name     string
		capacity int
		ops      []op
		left     int64
	}{
		{"nothing recorded", 2, []op{take(0, "")}, 0},
		{"taken once", 2, []op{rec(0), take(0, "failure 0"), take(0, "")}, 0},
		{"others untouched", 2, []op{rec(0), rec(1), take(1, "failure 1")}, 1},
		{"oldest evicted past capacity", 2, []op{rec(0), rec(1), rec(2), take(0, ""), take(1, "failure 1"), take(2, "failure 2")}, 0},
		{"recorded again keeps one slot and the last error", 2, []op{rec(0), rec(0), rec(1), take(0, "failure 1"), take(1, "failure 2")}, 0},
		{"a taken slot is reused without evicting", 2, []op{rec(0), rec(1), take(0, "failure 0"), rec(2), take(1, "failure 1"), take(2, "failure 3")}, 0},
		{"wraps", 3, []op{rec(0), rec(1), rec(2), rec(3), take(0, ""), rec(0), take(1, ""), take(2, "failure 2"), take(3, "failure 3")}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			msgs := make([]*nudgev1.Event, 4)
			for i := range msgs {
				msgs[i] = &nudgev1.Event{}
			}
			d := newDecodeFailures(tc.capacity)
			for n, o := range tc.ops {
				if !o.take {
					d.record(msgs[o.msg], fmt.Errorf("failure %d", n))
				} else {
					got := ""
					if err := d.take(msgs[o.msg]); err != nil {
						got = err.Error()
					}
					if got != o.want {
						t.Errorf("op %d: take msgs[%d] = %q, want %q", n, o.msg, got, o.want)
					}
				}
				pinned := 0
				for _, m := range d.ring {
					if m != nil {
						pinned++
					}
				}
				if live := d.live.Load(); live != int64(len(d.byMsg)) || pinned != len(d.byMsg) || pinned > tc.capacity {
					t.Fatalf("op %d: live %d, %d entries, %d messages in the ring, capacity %d", n, live, len(d.byMsg), pinned, tc.capacity)
				}
			}
			if n := d.live.Load(); n != tc.left {
				t.Errorf("%d entries left, want %d", n, tc.left)
			}
			if d.take("not a message") != nil {
				t.Error("take of a non-message returned an error")
			}
		})
	}
}
