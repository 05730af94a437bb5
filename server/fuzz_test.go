package server

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/examples"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// fuzzNow is the processing time of the fuzz targets. The seed corpus's
// valid events happened shortly before it.
var fuzzNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// FuzzIngestBatch feeds arbitrary bytes, decoded as a PublishRequest,
// through the path every ingested event takes: request validation
// (protovalidate, per event), conversion to profile.Event, the time limits
// and the rules step, on a store that encodes and decodes every profile it
// writes. It checks that nothing panics, that a request fails only with
// InvalidArgument, that every event of an accepted batch gets exactly one
// result, in order, that an event refused by validation or the limits, or
// whose occurred_at is not a valid Timestamp, is REJECTED with a reason,
// and that the response can be sent (marshals). FuzzStream checks the
// same of every batch of an ingest stream, through the Stream handler.
//
// The seed corpus (testdata/fuzz/FuzzIngestBatch) holds marshalled
// requests: valid events, events violating each field rule, bad
// timestamps, duplicates and batches of both request types (FuzzStream
// seeds from it too).
func FuzzIngestBatch(f *testing.F) {
	f.Add([]byte(nil))
	store := &memStore{now: func() time.Time { return fuzzNow }}
	s := newFuzzServer(f, store)
	limits := s.cfg.Limits
	f.Fuzz(func(t *testing.T, data []byte) {
		var pub nudgev1.PublishRequest
		if proto.Unmarshal(data, &pub) != nil {
			return
		}
		store.reset()
		resp, err := s.Publish(t.Context(), &pub)
		checkBatch(t, s, limits, &pub, pub.GetEvents(), resp.GetResults(), resp, err)
	})
}

// checkBatch checks the server's answer to one batch request.
func checkBatch(t *testing.T, s *Server, limits profile.Limits, req proto.Message, events []*nudgev1.Event,
	results []*nudgev1.EventResult, resp proto.Message, err error) {
	t.Helper()
	if err != nil {
		if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument {
			t.Fatalf("request failed with %v, want InvalidArgument or per-event results", err)
		}
		return
	}
	if _, err := proto.Marshal(resp); err != nil {
		t.Fatalf("response does not marshal: %v", err)
	}
	if len(results) != len(events) {
		t.Fatalf("%d results for %d events", len(results), len(events))
	}
	// The same validation again, to know which events it refused.
	refused, err := s.validateBatch(req)
	if err != nil {
		t.Fatalf("validation failed the batch the second time only: %v", err)
	}
	for i, e := range events {
		r := results[i]
		if r.GetEventId() != e.GetEventId() {
			t.Fatalf("result %d is for event %q, want %q", i, r.GetEventId(), e.GetEventId())
		}
		switch r.GetStatus() {
		case nudgev1.EventStatus_EVENT_STATUS_APPLIED, nudgev1.EventStatus_EVENT_STATUS_DUPLICATE:
		case nudgev1.EventStatus_EVENT_STATUS_REJECTED:
			if r.GetReason() == "" {
				t.Fatalf("event %d rejected without a reason", i)
			}
		default:
			t.Fatalf("event %d: status %v", i, r.GetStatus())
		}
		if err := e.GetOccurredAt().CheckValid(); e.GetOccurredAt() != nil && err != nil &&
			r.GetStatus() != nudgev1.EventStatus_EVENT_STATUS_REJECTED {
			t.Fatalf("event %d has an invalid occurred_at (%v) but is %v", i, err, r.GetStatus())
		}
		if reason, bad := refused[i]; bad {
			if reason == "" || r.GetStatus() != nudgev1.EventStatus_EVENT_STATUS_REJECTED {
				t.Fatalf("event %d violates the request rules (%q) but is %v", i, reason, r.GetStatus())
			}
			continue
		}
		// Valid: it converts, and the time limits decide whether it
		// applies.
		pe := EventFromProto(e)
		if pe.ID != e.GetEventId() || pe.UserID != e.GetUserId() || pe.Type != e.GetType() {
			t.Fatalf("event %d converts to %+v", i, pe)
		}
		switch res, ok := limits.Check(&pe, fuzzNow); {
		case !ok && (res.Reason == "" || res.Status != profile.Rejected):
			t.Fatalf("event %d refused by the limits without a reason: %+v", i, res)
		case !ok && r.GetStatus() != nudgev1.EventStatus_EVENT_STATUS_REJECTED:
			t.Fatalf("event %d is refused by the limits (%s) but %v", i, res.Reason, r.GetStatus())
		case ok && r.GetStatus() == nudgev1.EventStatus_EVENT_STATUS_REJECTED:
			t.Fatalf("valid event %d rejected: %s", i, r.GetReason())
		}
	}
}

// newFuzzServer is a Server on store with the example rules, on the fuzz
// clock, logging nowhere. Its gRPC server is not started.
func newFuzzServer(tb testing.TB, store Store) *Server {
	tb.Helper()
	rules, err := decision.Parse(examples.RulesName, examples.Rules)
	if err != nil {
		tb.Fatalf("example rules: %v", err)
	}
	s, err := New(store, decision.NewLive(rules, examples.RulesName), Config{
		Now:    func() time.Time { return fuzzNow },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return s
}

// memStore is a Store on a map of encoded profiles, written as RedisStore
// writes them (version and update time, Encode) and read back with Decode,
// so a profile that does not survive its stored form fails the call with
// ErrCorrupt. It is safe for concurrent use.
type memStore struct {
	now func() time.Time

	mu       sync.Mutex
	profiles map[string][]byte
}

var _ Store = (*memStore)(nil)

func (m *memStore) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.profiles)
}

// transact runs fn on the user's profile and stores it if fn changed it.
func (m *memStore) transact(userID string, fn func(p *profile.Profile, now time.Time) bool) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := &profile.Profile{}
	if b, ok := m.profiles[userID]; ok {
		var err error
		if p, err = profile.Decode(b); err != nil {
			return 0, err
		}
	}
	now := m.now()
	if !fn(p, now) {
		return p.Version, nil
	}
	p.Version++
	p.UpdatedAt = now
	b := profile.Encode(p)
	if _, err := profile.Decode(b); err != nil {
		return 0, err
	}
	if m.profiles == nil {
		m.profiles = make(map[string][]byte)
	}
	m.profiles[userID] = b
	return p.Version, nil
}

func (m *memStore) Apply(ctx context.Context, events []profile.Event, step profile.Step) profile.BatchOutcome {
	return ApplyByUser(ctx, events, step, func(_ context.Context, users []UserEvents, step profile.Step) []UserOutcome {
		out := make([]UserOutcome, len(users))
		for i, u := range users {
			var o profile.Outcome
			v, err := m.transact(u.UserID, func(p *profile.Profile, now time.Time) bool {
				o = step(p, u.Events, now)
				return o.Changed
			})
			out[i] = UserOutcome{Outcome: o, Version: v, Err: err}
		}
		return out
	})
}

func (m *memStore) Get(_ context.Context, userID string) (*profile.Profile, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.profiles[userID]
	if !ok {
		return nil, profile.ErrNotFound
	}
	return profile.Decode(b)
}

func (m *memStore) Peek(string, uint64) (*profile.Profile, bool, error) { return nil, false, nil }

func (m *memStore) Load(ctx context.Context, userID string, _ uint64) (*profile.Profile, error) {
	return m.Get(ctx, userID)
}

func (m *memStore) ReadMany(ctx context.Context, userIDs []string) ([]*profile.Profile, []error) {
	return m.LoadMany(ctx, userIDs)
}

func (m *memStore) LoadMany(ctx context.Context, userIDs []string) ([]*profile.Profile, []error) {
	ps, errs := make([]*profile.Profile, len(userIDs)), make([]error, len(userIDs))
	for i, id := range userIDs {
		ps[i], errs[i] = m.Get(ctx, id)
	}
	return ps, errs
}

func (m *memStore) Update(_ context.Context, userID string, fn func(p *profile.Profile, now time.Time) bool) (uint64, error) {
	return m.transact(userID, fn)
}

func (m *memStore) Delete(_ context.Context, userID string) (profile.DeleteResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.profiles[userID]
	delete(m.profiles, userID)
	return profile.DeleteResult{Existed: ok}, nil
}
