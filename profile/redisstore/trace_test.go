package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// tracedStore is a store on its own redis-server whose spans are recorded.
type tracedStore struct {
	storeEnv
	rec *tracetest.SpanRecorder
	tp  *sdktrace.TracerProvider
}

// newTracedStore is newStore with a span recorder, and a Redis client that
// gives up at once when the server is down (some tests stop it), instead of
// go-redis's dial and command retries.
func newTracedStore(t *testing.T, opt redisstore.Options) tracedStore {
	t.Helper()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	opt.TracerProvider = tp
	if opt.Buckets == 0 {
		opt.Buckets = 16
	}
	opt.Now = func() time.Time { return storeNow }
	return tracedStore{storeEnv: storeEnv{srv: srv, rdb: rdb, store: redisstore.New(rdb, opt)}, rec: rec, tp: tp}
}

// traced runs op under a parent span, as a server handler would, and
// returns the one span the store ended under it.
func (ts tracedStore) traced(t *testing.T, op func(ctx context.Context)) sdktrace.ReadOnlySpan {
	t.Helper()
	before := len(ts.rec.Ended())
	ctx, parent := ts.tp.Tracer("test").Start(t.Context(), "rpc")
	op(ctx)
	parent.End()
	var children []sdktrace.ReadOnlySpan
	for _, s := range ts.rec.Ended()[before:] {
		if s.Parent().SpanID() == parent.SpanContext().SpanID() {
			if s.SpanContext().TraceID() != parent.SpanContext().TraceID() {
				t.Errorf("span %s is in trace %s, its parent in %s", s.Name(), s.SpanContext().TraceID(), parent.SpanContext().TraceID())
			}
			children = append(children, s)
		}
	}
	if len(children) != 1 {
		t.Fatalf("%d store spans under the caller's span, want 1", len(children))
	}
	return children[0]
}

// wantSpan checks a store span's name, attributes (those of want; others
// may be there too), status code, and that no user id appears in it.
func wantSpan(t *testing.T, s sdktrace.ReadOnlySpan, name string, code codes.Code, want []attribute.KeyValue, users ...string) {
	t.Helper()
	if s.Name() != name {
		t.Errorf("span name %q, want %q", s.Name(), name)
	}
	got := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		got[kv.Key] = kv.Value
	}
	for _, kv := range want {
		if v, ok := got[kv.Key]; !ok || v != kv.Value {
			t.Errorf("%s: attribute %s = %q, want %q", name, kv.Key, v.Emit(), kv.Value.Emit())
		}
	}
	if s.Status().Code != code {
		t.Errorf("%s: status %v (%q), want %v", name, s.Status().Code, s.Status().Description, code)
	}
	if code == codes.Error && len(s.Events()) == 0 {
		t.Errorf("%s: error status without a recorded error", name)
	}
	texts := []string{s.Status().Description}
	for _, kv := range s.Attributes() {
		texts = append(texts, kv.Value.Emit())
	}
	for _, e := range s.Events() {
		for _, kv := range e.Attributes {
			texts = append(texts, kv.Value.Emit())
		}
	}
	for _, u := range users {
		for _, text := range texts {
			if strings.Contains(text, u) {
				t.Errorf("%s: user id %q in the span: %q", name, u, text)
			}
		}
	}
}

// TestStoreTracing checks the span of each store call, in the order a
// user's life goes: each is a child of the caller's span and carries
// counts, never the user id.
func TestStoreTracing(t *testing.T) {
	ts := newTracedStore(t, redisstore.Options{})
	const user, absent = "user-traced-1", "user-traced-absent"
	bucket := int64(ts.store.Layout().Bucket(user))
	step := triggerStep(profile.Limits{})
	events := []profile.Event{uev(user, "e1", triggerType, storeNow), uev(user, "e2", "view", storeNow)}
	apply := func(ctx context.Context) {
		if out := applyUsers(ctx, ts.store, one(user, events...), step); out[0].Err != nil {
			t.Fatal(out[0].Err)
		}
	}
	tests := []struct {
		name string
		op   func(ctx context.Context)
		span string
		want []attribute.KeyValue
	}{
		{"apply commits", apply, "nudge.profile.transaction", []attribute.KeyValue{
			attribute.Int("nudge.profile.users", 1), attribute.Int("nudge.profile.events", 2),
			attribute.Int64("nudge.profile.bucket", bucket), attribute.Int("nudge.profile.attempts", 1),
			attribute.Int("nudge.profile.conflicts", 0), attribute.String("nudge.profile.outcome", "committed"),
		}},
		{"apply again: duplicates only", apply, "nudge.profile.transaction", []attribute.KeyValue{
			attribute.Int("nudge.profile.events", 2), attribute.String("nudge.profile.outcome", "unchanged"),
		}},
		{"update without a change", func(ctx context.Context) {
			if _, err := ts.store.Update(ctx, user, func(*profile.Profile, time.Time) bool { return false }); err != nil {
				t.Fatal(err)
			}
		}, "nudge.profile.transaction", []attribute.KeyValue{
			attribute.Int("nudge.profile.events", 0), attribute.String("nudge.profile.outcome", "unchanged"),
		}},
		{"get", func(ctx context.Context) {
			if _, err := ts.store.Get(ctx, user); err != nil {
				t.Fatal(err)
			}
		}, "nudge.profile.read", []attribute.KeyValue{
			attribute.Int("nudge.profile.users", 1), attribute.Int("nudge.profile.not_found", 0),
		}},
		{"get absent: not an error", func(ctx context.Context) {
			if _, err := ts.store.Get(ctx, absent); !errors.Is(err, profile.ErrNotFound) {
				t.Fatalf("Get(absent) = %v, want ErrNotFound", err)
			}
		}, "nudge.profile.read", []attribute.KeyValue{
			attribute.Int("nudge.profile.users", 1), attribute.Int("nudge.profile.not_found", 1),
		}},
		{"get many", func(ctx context.Context) {
			ts.store.GetMany(ctx, []string{user, absent}, nil)
		}, "nudge.profile.read", []attribute.KeyValue{
			attribute.Int("nudge.profile.users", 2), attribute.Int("nudge.profile.not_found", 1),
		}},
		{"delete", func(ctx context.Context) {
			if _, err := ts.store.Delete(ctx, user); err != nil {
				t.Fatal(err)
			}
		}, "nudge.profile.delete", []attribute.KeyValue{
			attribute.Int64("nudge.profile.bucket", bucket), attribute.Bool("nudge.profile.existed", true),
			attribute.Int("nudge.profile.actions", 1),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ts.traced(t, tt.op)
			wantSpan(t, s, tt.span, codes.Unset, tt.want, user, absent)
		})
	}
}

// TestStoreTracingConflict has a second store (another server, in
// production) write the user between the first store's read and its EXEC:
// the transaction span counts the conflict and the second attempt.
func TestStoreTracingConflict(t *testing.T) {
	ts := newTracedStore(t, redisstore.Options{})
	other := redisstore.New(ts.srv.Client(t), redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})
	const user = "user-contended-1"
	step := triggerStep(profile.Limits{})
	calls := 0
	interfering := func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		if calls++; calls == 1 {
			if out := applyUsers(t.Context(), other, one(user, uev(user, "other-1", "view", storeNow)), step); out[0].Err != nil {
				t.Errorf("the other store's Apply: %v", out[0].Err)
			}
		}
		return step(p, events, now)
	}
	s := ts.traced(t, func(ctx context.Context) {
		if out := applyUsers(ctx, ts.store, one(user, uev(user, "e1", "view", storeNow)), interfering); out[0].Err != nil {
			t.Fatal(out[0].Err)
		}
	})
	wantSpan(t, s, "nudge.profile.transaction", codes.Unset, []attribute.KeyValue{
		attribute.Int("nudge.profile.attempts", 2), attribute.Int("nudge.profile.conflicts", 1),
		attribute.String("nudge.profile.outcome", "committed"),
	}, user)
	if p, err := ts.store.Get(t.Context(), user); err != nil || p.Total("view") != 2 {
		t.Errorf("Get = %v, %v; want both stores' views", p, err)
	}
}

// TestStoreTracingErrors checks failed calls: the span has an error status
// and the recorded error, without the user id that the returned error
// carries.
func TestStoreTracingErrors(t *testing.T) {
	const user = "user-failing-1"
	e := uev(user, "e1", triggerType, storeNow)
	tests := []struct {
		name    string
		opt     redisstore.Options
		setup   func(t *testing.T, ts tracedStore) profile.Step
		outcome string
		wantErr error
	}{
		{"conflicts exhausted", redisstore.Options{MaxAttempts: 2}, func(t *testing.T, ts tracedStore) profile.Step {
			intruder := profile.Encode(&profile.Profile{Version: 7})
			step, _ := interferingStep(t, ts.storeEnv, user, intruder, 1<<30, triggerStep(profile.Limits{}), nil)
			return step
		}, "exhausted", profile.ErrConflict},
		{"corrupt profile", redisstore.Options{}, func(t *testing.T, ts tracedStore) profile.Step {
			if err := ts.rdb.Set(t.Context(), ts.store.Layout().ProfileKey(user), "garbage", 0).Err(); err != nil {
				t.Fatal(err)
			}
			return triggerStep(profile.Limits{})
		}, "error", profile.ErrCorrupt},
		{"redis down", redisstore.Options{MaxErrorRetries: -1}, func(t *testing.T, ts tracedStore) profile.Step {
			ts.srv.Stop()
			return triggerStep(profile.Limits{})
		}, "error", profile.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTracedStore(t, tt.opt)
			step := tt.setup(t, ts)
			var err error
			s := ts.traced(t, func(ctx context.Context) {
				err = applyUsers(ctx, ts.store, one(user, e), step)[0].Err
			})
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), user) {
				t.Errorf("Apply Err = %v, want one wrapping %v and naming the user", err, tt.wantErr)
			}
			wantSpan(t, s, "nudge.profile.transaction", codes.Error, []attribute.KeyValue{
				attribute.String("nudge.profile.outcome", tt.outcome),
			}, user)
			if !strings.Contains(s.Status().Description, tt.wantErr.Error()) {
				t.Errorf("status %q does not say %q", s.Status().Description, tt.wantErr)
			}
		})
	}

	t.Run("read with redis down", func(t *testing.T) {
		ts := newTracedStore(t, redisstore.Options{})
		ts.srv.Stop()
		s := ts.traced(t, func(ctx context.Context) { ts.store.GetMany(ctx, []string{user, "user-failing-2"}, nil) })
		wantSpan(t, s, "nudge.profile.read", codes.Error, []attribute.KeyValue{
			attribute.Int("nudge.profile.users", 2), attribute.Int("nudge.profile.not_found", 0),
		}, user, "user-failing-2")
	})
}

// benchStore is newStore for benchmarks.
func benchStore(b *testing.B, opt redisstore.Options) *redisstore.Store {
	b.Helper()
	opt.Buckets = 16
	opt.Now = func() time.Time { return storeNow }
	return redisstore.New(redistest.Start(b).Client(b), opt)
}

// BenchmarkStoreTracing measures a single-user, single-event Apply (one
// transaction) and a Get on a real redis-server, with tracing off (the
// default) and on (every span sampled, batched to an exporter that drops
// them). The allocations of "off" must not grow with the tracing code.
func BenchmarkStoreTracing(b *testing.B) {
	on := func(b *testing.B) redisstore.Options {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		return redisstore.Options{TracerProvider: tp}
	}
	b.Run("apply/off", func(b *testing.B) { benchApply(b, redisstore.Options{}) })
	b.Run("apply/on", func(b *testing.B) { benchApply(b, on(b)) })
	b.Run("get/off", func(b *testing.B) { benchGet(b, redisstore.Options{}) })
	b.Run("get/on", func(b *testing.B) { benchGet(b, on(b)) })
}

func benchApply(b *testing.B, opt redisstore.Options) {
	s := benchStore(b, opt)
	step := triggerStep(profile.Limits{})
	const users = 256
	batches := make([][]userEvents, b.N)
	for i := range batches {
		user := fmt.Sprintf("u-%d", i%users)
		batches[i] = one(user, uev(user, fmt.Sprintf("e-%d", i), "view", storeNow))
	}
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if out := applyUsers(ctx, s, batches[i], step); out[0].Err != nil {
			b.Fatal(out[0].Err)
		}
	}
}

func benchGet(b *testing.B, opt redisstore.Options) {
	s := benchStore(b, opt)
	ctx := b.Context()
	if out := applyUsers(ctx, s, one("u", uev("u", "e", "view", storeNow)), triggerStep(profile.Limits{})); out[0].Err != nil {
		b.Fatal(out[0].Err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Get(ctx, "u"); err != nil {
			b.Fatal(err)
		}
	}
}
