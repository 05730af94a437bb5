package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/internal/wiretest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// malformedSeed seeds the storm of TestMalformedRequests: a failure
// reproduces with the same seed.
const malformedSeed = 20250301

// Acceptance (issue 5): 10,000 malformed requests (random bytes as whole
// messages, strings that are not UTF-8, invalid field values, oversized
// batches and messages, bad timestamps, invalid decision requests) through
// Publish, Stream, GetDecision and BatchGetDecisions get only
// InvalidArgument or ResourceExhausted, or, for a malformed event in a
// batch that is otherwise well-formed, a REJECTED result; the server keeps
// serving, and the profiles (every Redis key, byte for byte) are untouched.
// Bytes that are not a valid message are InvalidArgument, not grpc-go's
// Internal, because of the codec NewGRPCServer installs (server/codec.go).
func TestMalformedRequests(t *testing.T) {
	e := newEnv(t, redisstore.Options{})
	users := seedMalformedUsers(t, e)
	before := snapshotRedis(t, e)

	const total, workers = 10_000, 4
	storm := newMalformedStorm(t, e, users)
	tallies := make([]*malformedTally, workers)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for w := range workers {
		tallies[w] = newMalformedTally()
		wg.Go(func() {
			storm.run(ctx, rand.New(rand.NewPCG(malformedSeed, uint64(w))), w == 0, total/workers, tallies[w])
		})
	}
	wg.Wait()
	sum := newMalformedTally()
	for _, tl := range tallies {
		sum.merge(tl)
	}
	t.Logf("seed %d: %d malformed messages: %s", malformedSeed, sum.sent, sum)
	if sum.sent < total {
		t.Errorf("sent %d malformed messages, want %d", sum.sent, total)
	}
	for _, p := range sum.problems {
		t.Error(p)
	}
	if sum.dropped > 0 {
		t.Errorf("... and %d more problems", sum.dropped)
	}

	after := snapshotRedis(t, e)
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if v, ok := before[k]; !ok {
			t.Errorf("key %q appeared", k)
		} else if v != after[k] {
			t.Errorf("key %q changed", k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Errorf("key %q disappeared", k)
		}
	}

	// Still serving, and a valid request still works.
	h, err := healthpb.NewHealthClient(e.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after the storm: %v, %v", h, err)
	}
	resp := e.publish(t, ev("after-storm", "view", "phones", time.Minute))
	wantStatus(t, resp.Results[0], applied)
	if _, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: users[0], Channel: "web"}); err != nil {
		t.Fatalf("GetDecision after the storm: %v", err)
	}
}

// seedMalformedUsers gives a few users real profiles (and one an action in
// the outbox), and returns their ids.
func seedMalformedUsers(t *testing.T, e *env) []string {
	t.Helper()
	users := []string{"seed-viewer", "seed-buyer", "seed-subscriber", "seed-browser"}
	buy := ev(users[1], "purchase", "phones", 2*time.Hour)
	buy.Value = 120
	buy.Attributes = map[string]string{"tz": "Europe/Paris"}
	sub := ev(users[2], "subscribe", "", time.Hour)
	sub.Channel = "sms"
	sent := ev(users[2], "message_sent", "", 30*time.Minute)
	sent.Channel = "sms"
	sent.Attributes = map[string]string{"offer_id": "phones-coupon"}
	resp := e.publish(t,
		ev(users[0], "view", "phones", 20*time.Minute), ev(users[0], "view", "phones", 10*time.Minute),
		ev(users[0], "view", "phones", 5*time.Minute), buy, sub, sent, ev(users[3], "view", "laptops", time.Minute))
	for _, r := range resp.Results {
		wantStatus(t, r, applied)
	}
	if len(resp.Actions) != 1 {
		t.Fatalf("seeding triggered %d actions, want 1", len(resp.Actions))
	}
	return users
}

// snapshotRedis reads every key of the env's Redis: a string's value, or
// any other type's DUMP.
func snapshotRedis(t *testing.T, e *env) map[string]string {
	t.Helper()
	ctx := ctxT(t)
	keys, err := e.rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatalf("KEYS: %v", err)
	}
	snap := make(map[string]string, len(keys))
	profiles := 0
	for _, k := range keys {
		typ, err := e.rdb.Type(ctx, k).Result()
		if err != nil {
			t.Fatalf("TYPE %s: %v", k, err)
		}
		var v string
		if typ == "string" {
			v, err = e.rdb.Get(ctx, k).Result()
			profiles++
		} else {
			v, err = e.rdb.Dump(ctx, k).Result()
		}
		if err != nil {
			t.Fatalf("read %s (%s): %v", k, typ, err)
		}
		snap[k] = typ + ":" + v
	}
	if profiles == 0 {
		t.Fatalf("no profile in Redis: keys %v", keys)
	}
	return snap
}

// malformedTally counts the outcomes of one worker's messages.
type malformedTally struct {
	sent     int
	codes    map[codes.Code]int // per RPC error; OK for a batch answered with results
	rejected int                // REJECTED results
	problems []string
	dropped  int
}

func newMalformedTally() *malformedTally { return &malformedTally{codes: make(map[codes.Code]int)} }

func (tl *malformedTally) problem(format string, args ...any) {
	if len(tl.problems) >= 20 {
		tl.dropped++
		return
	}
	tl.problems = append(tl.problems, fmt.Sprintf(format, args...))
}

func (tl *malformedTally) merge(o *malformedTally) {
	tl.sent += o.sent
	for c, n := range o.codes {
		tl.codes[c] += n
	}
	tl.rejected += o.rejected
	tl.dropped += o.dropped
	for _, p := range o.problems {
		tl.problem("%s", p)
	}
}

func (tl *malformedTally) String() string {
	var b strings.Builder
	for _, c := range slices.Sorted(maps.Keys(tl.codes)) {
		fmt.Fprintf(&b, "%s=%d ", c, tl.codes[c])
	}
	fmt.Fprintf(&b, "(OK: batches answered with every event REJECTED); REJECTED events=%d", tl.rejected)
	return b.String()
}

// rpcErr records an RPC error, which must be InvalidArgument or
// ResourceExhausted.
func (tl *malformedTally) rpcErr(what string, err error) {
	st := status.Convert(err)
	tl.codes[st.Code()]++
	if st.Code() != codes.InvalidArgument && st.Code() != codes.ResourceExhausted {
		tl.problem("%s: %s %q, want InvalidArgument or ResourceExhausted", what, st.Code(), st.Message())
	}
}

// batchResults records a batch answered with results: every event of the
// storm is malformed, so every result must be REJECTED with a reason.
func (tl *malformedTally) batchResults(what string, results []*nudgev1.EventResult, events int) {
	tl.codes[codes.OK]++
	if len(results) != events {
		tl.problem("%s: %d results for %d events", what, len(results), events)
	}
	for _, r := range results {
		if r.GetStatus() != rejected || r.GetReason() == "" {
			tl.problem("%s: event %q %s (reason %q), want REJECTED with a reason", what, r.GetEventId(), r.GetStatus(), r.GetReason())
			continue
		}
		tl.rejected++
	}
}

// malformedStorm makes malformed messages and sends them.
type malformedStorm struct {
	conn  *grpc.ClientConn
	users []string // seeded users, and users without a profile
	now   time.Time
	// Prebuilt, as they are large: a batch of max_items+1 events (as
	// PublishRequest, StreamRequest and BatchGetDecisionsRequest), and
	// a message over the server's 16 MiB limit.
	bigPublish, bigStream, bigDecisions, overLimit []byte
}

func newMalformedStorm(t *testing.T, e *env, seeded []string) *malformedStorm {
	t.Helper()
	s := &malformedStorm{conn: e.conn, users: append(slices.Clone(seeded), "fresh-1", "fresh-2"), now: time.Now()}
	events := make([]*nudgev1.Event, 5001) // max_items is 5000
	for i := range events {
		events[i] = s.event(rand.New(rand.NewPCG(malformedSeed, uint64(i))))
	}
	queries := make([]*nudgev1.DecisionQuery, 1001) // max_items is 1000
	for i := range queries {
		queries[i] = &nudgev1.DecisionQuery{UserId: s.users[i%len(s.users)], Channel: "web"}
	}
	s.bigPublish = mustMarshalMalformed(t, &nudgev1.PublishRequest{Events: events})
	s.bigStream = mustMarshalMalformed(t, &nudgev1.StreamRequest{Seq: 1, Events: events})
	s.bigDecisions = mustMarshalMalformed(t, &nudgev1.BatchGetDecisionsRequest{Queries: queries})
	s.overLimit = bytes.Repeat([]byte{0x0a, 0x80}, 17<<19) // 17 MiB
	return s
}

func mustMarshalMalformed(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// run sends n malformed messages with rng. The first worker starts with the
// large ones, a few of each (they take long to validate).
func (s *malformedStorm) run(ctx context.Context, rng *rand.Rand, first bool, n int, tl *malformedTally) {
	if first {
		s.unary(ctx, nudgev1.IngestService_Publish_FullMethodName, s.overLimit, tl)
		s.stream(ctx, rng, 0, s.overLimit, tl)
		for range 3 {
			s.unary(ctx, nudgev1.IngestService_Publish_FullMethodName, s.bigPublish, tl)
			s.stream(ctx, rng, rng.IntN(3), s.bigStream, tl)
			s.unary(ctx, nudgev1.DecisionService_BatchGetDecisions_FullMethodName, s.bigDecisions, tl)
		}
	}
	for tl.sent < n {
		switch k := rng.IntN(100); {
		case k < 25:
			s.unary(ctx, nudgev1.IngestService_Publish_FullMethodName, s.publishBody(rng), tl)
		case k < 45:
			s.unary(ctx, nudgev1.DecisionService_GetDecision_FullMethodName, s.decisionBody(rng), tl)
		case k < 55:
			s.unary(ctx, nudgev1.DecisionService_BatchGetDecisions_FullMethodName, s.batchDecisionsBody(rng), tl)
		default:
			// A stream: malformed batches, then a message that ends it
			// (or a clean close).
			var last []byte
			switch rng.IntN(4) {
			case 0:
				last = randomBytes(rng)
			case 1:
				req := &nudgev1.StreamRequest{Seq: rng.Uint64(), Events: s.events(rng, rng.IntN(5)+1)}
				req.Events[0].Category = utf8Marker
				last = notUTF8(mustMarshalPlain(req))
			case 2:
				last = mustMarshalPlain(&nudgev1.StreamRequest{Seq: rng.Uint64()}) // no events
			}
			s.stream(ctx, rng, min(rng.IntN(8), n-tl.sent), last, tl)
		}
	}
}

// unary makes one call with body. Only a Publish may succeed, and only by
// rejecting every event of a request that decodes.
func (s *malformedStorm) unary(ctx context.Context, method string, body []byte, tl *malformedTally) {
	tl.sent++
	var out []byte
	err := s.conn.Invoke(ctx, method, &body, &out, grpc.ForceCodecV2(wiretest.RawCodec{}))
	if err != nil {
		tl.rpcErr(method, err)
		return
	}
	var req nudgev1.PublishRequest
	var resp nudgev1.PublishResponse
	if method != nudgev1.IngestService_Publish_FullMethodName || proto.Unmarshal(body, &req) != nil || proto.Unmarshal(out, &resp) != nil {
		tl.codes[codes.OK]++
		tl.problem("%s: malformed request %q answered OK: %q", method, truncate(body), truncate(out))
		return
	}
	tl.batchResults(method, resp.GetResults(), len(req.GetEvents()))
}

// stream sends batches malformed batches on one ingest stream, each
// answered before the next is sent, then last (a message that fails the
// stream), or closes the stream when last is nil.
func (s *malformedStorm) stream(ctx context.Context, rng *rand.Rand, batches int, last []byte, tl *malformedTally) {
	const what = "Stream"
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := s.conn.NewStream(ctx, &nudgev1.IngestService_ServiceDesc.Streams[0], nudgev1.IngestService_Stream_FullMethodName,
		grpc.ForceCodecV2(wiretest.RawCodec{}))
	if err != nil {
		tl.problem("%s: open: %v", what, err)
		return
	}
	for seq := range batches {
		n := rng.IntN(5) + 1
		body := mustMarshalPlain(&nudgev1.StreamRequest{Seq: uint64(seq), Events: s.events(rng, n)})
		tl.sent++
		if err := st.SendMsg(&body); err != nil {
			tl.problem("%s: send: %v", what, err)
			return
		}
		var out []byte
		if err := st.RecvMsg(&out); err != nil {
			tl.rpcErr(what, err)
			return
		}
		var resp nudgev1.StreamResponse
		if err := proto.Unmarshal(out, &resp); err != nil || resp.GetSeq() != uint64(seq) {
			tl.problem("%s: response to seq %d: seq %d, %v", what, seq, resp.GetSeq(), err)
			return
		}
		tl.batchResults(what, resp.GetResults(), n)
	}
	if last == nil {
		if err := st.CloseSend(); err != nil {
			tl.problem("%s: close: %v", what, err)
			return
		}
		var out []byte
		if err := st.RecvMsg(&out); !errors.Is(err, io.EOF) {
			tl.problem("%s: after a clean close: %v, want the end of the stream", what, err)
		}
		return
	}
	tl.sent++
	// Sending may fail once the server has answered: the status comes
	// from RecvMsg.
	_ = st.SendMsg(&last)
	var out []byte
	if err := st.RecvMsg(&out); err != nil {
		tl.rpcErr(what, err)
		return
	}
	// Random bytes that happen to decode are a batch like any other.
	var req nudgev1.StreamRequest
	var resp nudgev1.StreamResponse
	if proto.Unmarshal(last, &req) != nil || proto.Unmarshal(out, &resp) != nil {
		tl.codes[codes.OK]++
		tl.problem("%s: malformed message %q answered %q", what, truncate(last), truncate(out))
		return
	}
	tl.batchResults(what, resp.GetResults(), len(req.GetEvents()))
}

// publishBody is a malformed PublishRequest: random bytes, a string that is
// not UTF-8, no events, or malformed events.
func (s *malformedStorm) publishBody(rng *rand.Rand) []byte {
	switch k := rng.IntN(10); {
	case k < 2:
		return randomBytes(rng)
	case k < 3:
		req := &nudgev1.PublishRequest{Events: s.events(rng, rng.IntN(5)+1)}
		req.Events[0].Category = utf8Marker
		return notUTF8(mustMarshalPlain(req))
	case k < 4:
		return nil // no events
	}
	return mustMarshalPlain(&nudgev1.PublishRequest{Events: s.events(rng, rng.IntN(5)+1)})
}

func (s *malformedStorm) events(rng *rand.Rand, n int) []*nudgev1.Event {
	events := make([]*nudgev1.Event, n)
	for i := range events {
		events[i] = s.event(rng)
	}
	return events
}

// event is a malformed event: a valid one, for a seeded user or one
// without a profile, with one to three of its fields made invalid.
func (s *malformedStorm) event(rng *rand.Rand) *nudgev1.Event {
	e := &nudgev1.Event{
		EventId:    fmt.Sprintf("m-%d", rng.Uint64()),
		UserId:     s.users[rng.IntN(len(s.users))],
		Type:       "view",
		Category:   "phones",
		OccurredAt: timestamppb.New(s.now.Add(-time.Minute)),
	}
	for range rng.IntN(3) + 1 {
		eventBreakers[rng.IntN(len(eventBreakers))](rng, e, s.now)
	}
	return e
}

// eventBreakers each make an event invalid, whatever its other fields.
var eventBreakers = []func(rng *rand.Rand, e *nudgev1.Event, now time.Time){
	func(rng *rand.Rand, e *nudgev1.Event, _ time.Time) { e.EventId = badID(rng) },
	func(rng *rand.Rand, e *nudgev1.Event, _ time.Time) { e.UserId = badID(rng) },
	func(rng *rand.Rand, e *nudgev1.Event, _ time.Time) {
		e.Type = pick(rng, "", "View", "1view", "vi ew", "view!", strings.Repeat("v", 65), "vïew", randomString(rng, 1+rng.IntN(8), "ABC !\x00\t"))
	},
	func(rng *rand.Rand, e *nudgev1.Event, now time.Time) { e.OccurredAt = badTimestamp(rng, now) },
	func(rng *rand.Rand, e *nudgev1.Event, _ time.Time) {
		e.Category = pick(rng, "pho\x00nes", "\n", "tab\there", strings.Repeat("c", 129), randomString(rng, 1+rng.IntN(20), "\x01\x1f\x07"))
	},
	func(rng *rand.Rand, e *nudgev1.Event, _ time.Time) {
		e.ItemId = strings.Repeat("i", 129+rng.IntN(1000))
	},
	func(rng *rand.Rand, e *nudgev1.Event, _ time.Time) {
		e.Value = pick(rng, math.NaN(), math.Inf(1), math.Inf(-1))
	},
	func(rng *rand.Rand, e *nudgev1.Event, _ time.Time) {
		e.Channel = pick(rng, "SMS", "1sms", "sms!", "s m s", strings.Repeat("c", 33), "\x00")
	},
	func(rng *rand.Rand, e *nudgev1.Event, _ time.Time) { e.Attributes = badMap(rng) },
}

// badID breaks the pattern ^[\x21-\x7e]+$ or the 128-byte limit.
func badID(rng *rand.Rand) string {
	return pick(rng, "", " ", "has space", "tab\t", "nul\x00", "é", "日本", strings.Repeat("x", 129+rng.IntN(200)),
		randomString(rng, 1+rng.IntN(30), " \x00\x01\x7f\u00e9\u2028"))
}

// badTimestamp is missing, too old, too new, or not a valid Timestamp.
func badTimestamp(rng *rand.Rand, now time.Time) *timestamppb.Timestamp {
	ts := timestamppb.New(now.Add(-time.Minute))
	switch rng.IntN(9) {
	case 0:
		return nil
	case 1:
		return &timestamppb.Timestamp{} // the epoch
	case 2:
		return timestamppb.New(now.Add(time.Duration(6+rng.IntN(1e6)) * time.Minute)) // beyond the 5m future limit
	case 3:
		return timestamppb.New(now.Add(-time.Duration(91*24+1+rng.IntN(1e5)) * time.Hour)) // beyond the 90-day retention
	case 4:
		ts.Nanos = -1 - rng.Int32N(1e9)
	case 5:
		ts.Nanos = 1e9 + rng.Int32N(1e9)
	case 6:
		ts.Seconds = math.MaxInt64 - rng.Int64N(1e6)
	case 7:
		ts.Seconds = math.MinInt64 + rng.Int64N(1e6)
	case 8:
		ts.Seconds = 253402300800 + rng.Int64N(1e9) // after 9999-12-31
	}
	return ts
}

// badMap breaks the attribute or context limits: 32 pairs, keys of 1 to 64
// bytes, values of at most 256.
func badMap(rng *rand.Rand) map[string]string {
	m := map[string]string{"tz": "Europe/Paris"}
	switch rng.IntN(4) {
	case 0:
		for i := range 33 + rng.IntN(100) {
			m[fmt.Sprintf("k%d", i)] = "v"
		}
	case 1:
		m[""] = "empty key"
	case 2:
		m[strings.Repeat("k", 65)] = "long key"
	case 3:
		m["long"] = strings.Repeat("v", 257+rng.IntN(4096))
	}
	return m
}

// decisionBody is a GetDecisionRequest that must fail: random bytes, a
// string that is not UTF-8, or invalid fields.
func (s *malformedStorm) decisionBody(rng *rand.Rand) []byte {
	switch rng.IntN(10) {
	case 0:
		return randomBytes(rng)
	case 1:
		return notUTF8(mustMarshalPlain(&nudgev1.GetDecisionRequest{UserId: s.users[0] + utf8Marker, Channel: "sms"}))
	}
	req := &nudgev1.GetDecisionRequest{UserId: s.users[rng.IntN(len(s.users))], Channel: "sms", Placement: "home"}
	for range rng.IntN(2) + 1 {
		switch rng.IntN(7) {
		case 0:
			req.UserId = badID(rng)
		case 1:
			req.Channel = pick(rng, "", "SMS", "1sms", "s ms", strings.Repeat("c", 33))
		case 2:
			req.Placement = strings.Repeat("p", 129+rng.IntN(100))
		case 3:
			req.Context = badMap(rng)
		case 4: // over the 60 s budget limit, or negative
			req.Budget = pick(rng, durationpb.New(61*time.Second), durationpb.New(time.Hour), durationpb.New(-time.Millisecond),
				&durationpb.Duration{Seconds: math.MaxInt64})
		case 5: // reserve without a key
			req.Reserve = true
		case 6:
			req.IdempotencyKey = pick(rng, "has space", "nul\x00", strings.Repeat("k", 129))
		}
	}
	return mustMarshalPlain(req)
}

// batchDecisionsBody is a BatchGetDecisionsRequest that must fail.
func (s *malformedStorm) batchDecisionsBody(rng *rand.Rand) []byte {
	switch rng.IntN(5) {
	case 0:
		return randomBytes(rng)
	case 1:
		return nil // no queries
	}
	req := &nudgev1.BatchGetDecisionsRequest{}
	for range rng.IntN(5) + 1 {
		req.Queries = append(req.Queries, &nudgev1.DecisionQuery{UserId: s.users[rng.IntN(len(s.users))], Channel: "web"})
	}
	q := req.Queries[rng.IntN(len(req.Queries))]
	switch rng.IntN(4) {
	case 0:
		q.UserId = badID(rng)
	case 1:
		q.Channel = pick(rng, "", "WEB", strings.Repeat("w", 33))
	case 2:
		q.Context = badMap(rng)
	case 3:
		req.Budget = durationpb.New(61 * time.Second)
	}
	return mustMarshalPlain(req)
}

// utf8Marker is replaced by bytes that are not UTF-8 once a request is
// marshalled (proto.Marshal refuses such strings).
const utf8Marker = "#UTF8#"

// notUTF8 replaces the utf8Marker in a marshalled request by as many bytes
// that are not UTF-8.
func notUTF8(b []byte) []byte {
	i := bytes.Index(b, []byte(utf8Marker))
	if i < 0 {
		panic("notUTF8: no marker")
	}
	return slices.Concat(b[:i], []byte("\xff\xfe\xfd\xfc\xc0\x80"), b[i+len(utf8Marker):])
}

// randomBytes is 1 to 256 random bytes.
func randomBytes(rng *rand.Rand) []byte {
	b := make([]byte, 1+rng.IntN(256))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// randomString is n runes from the alphabet's runes.
func randomString(rng *rand.Rand, n int, alphabet string) string {
	runes := []rune(alphabet)
	var b strings.Builder
	for range n {
		b.WriteRune(runes[rng.IntN(len(runes))])
	}
	return b.String()
}

func pick[T any](rng *rand.Rand, choices ...T) T { return choices[rng.IntN(len(choices))] }

// mustMarshalPlain marshals a request whose strings are valid UTF-8.
func mustMarshalPlain(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", m, err))
	}
	return b
}

func truncate(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}
