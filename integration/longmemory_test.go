package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/internal/redistest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Long memory (issue 19): profiles count events per minute for 24 h, per
// hour for 7 days and per UTC day for the 90 days of the retention, accept
// events that old, and remember the id of every event they accepted.

const (
	day       = 24 * time.Hour
	week      = 7 * day
	month     = 30 * day
	retention = 90 * day
)

// longWindows are the windows of GetProfile beyond a day, with the
// resolution each is read at: a window counts every bucket of its tier
// from the one containing now-window on (profile/tiers.go), so a week
// reads hours from the hour containing now-7d, and 30 and 90 days read
// UTC days from the day containing now-window.
var longWindows = []struct {
	window, resolution time.Duration
}{{week, time.Hour}, {month, day}, {retention, day}}

// nudgedEnv is an env whose clients call a built nudged. The nudged has
// the store and the Redis connections: only the env's gRPC helpers
// (publish, profile) work on it.
func nudgedEnv(t *testing.T, n *nudged) *env {
	t.Helper()
	conn := dial(t, n.addr)
	return &env{
		conn:   conn,
		ingest: nudgev1.NewIngestServiceClient(conn),
		decide: nudgev1.NewDecisionServiceClient(conn),
		prof:   nudgev1.NewProfileServiceClient(conn),
		acts:   nudgev1.NewActionServiceClient(conn),
	}
}

// inWindow reports whether an event at `at` is counted by a window of the
// given length and resolution ending at now: it falls in the bucket
// containing now-window or a later one, up to now. (time.Truncate works
// from the zero time, a UTC midnight, so a day is a UTC day.)
func inWindow(at time.Time, window, resolution time.Duration, now time.Time) bool {
	return !at.Before(now.Add(-window).Truncate(resolution)) && !at.After(now)
}

// profileBracketed reads a profile and returns it with the times before
// and after the call: the server's now, at which the counts end, lies
// between them.
func profileBracketed(ctx context.Context, prof nudgev1.ProfileServiceClient, user string) (p *nudgev1.Profile, before, after time.Time, err error) {
	before = time.Now()
	resp, err := prof.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: user})
	return resp.GetProfile(), before, time.Now(), err
}

// countedEvent is what a windowed count sees of an event. (Small: the
// backfill makes a million of them, under -race.)
type countedEvent struct {
	at            time.Time
	typ, category string
}

// counted returns what the counts see of the events.
func counted(events []*nudgev1.Event) []countedEvent {
	out := make([]countedEvent, len(events))
	for i, e := range events {
		out[i] = countedEvent{e.GetOccurredAt().AsTime(), e.GetType(), e.GetCategory()}
	}
	return out
}

// countKey names one WindowedCount.
type countKey struct {
	typ, category string
	window        time.Duration
}

// countsOf indexes a profile's windowed counts.
func countsOf(p *nudgev1.Profile) map[countKey]uint64 {
	m := make(map[countKey]uint64, len(p.GetCounts()))
	for _, c := range p.GetCounts() {
		m[countKey{c.GetType(), c.GetCategory(), c.GetWindow().AsDuration()}] = c.GetCount()
	}
	return m
}

// checkLongCounts compares a profile's long-window counts, per type and
// category and per type, with those of the events (their types,
// categories and times) at the server's now, which lies in [before,
// after]: a count may be that at either end when a bucket boundary passed
// during the call. It returns the mismatches.
func checkLongCounts(p *nudgev1.Profile, events []countedEvent, before, after time.Time) []string {
	got := countsOf(p)
	expect := func(now time.Time) map[countKey]uint64 {
		m := map[countKey]uint64{}
		for _, e := range events {
			for _, w := range longWindows {
				var n uint64 // every series has every window, 0 included
				if inWindow(e.at, w.window, w.resolution, now) {
					n = 1
				}
				m[countKey{e.typ, e.category, w.window}] += n
				m[countKey{e.typ, "", w.window}] += n
			}
		}
		return m
	}
	early, late := expect(before), expect(after)
	var bad []string
	for k, want := range early {
		g, ok := got[k]
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("no %v count of %s/%q reported", k.window, k.typ, k.category))
		case g != want && g != late[k]:
			w := strconv.FormatUint(want, 10)
			if late[k] != want {
				w += " or " + strconv.FormatUint(late[k], 10)
			}
			bad = append(bad, fmt.Sprintf("%v count of %s/%q = %d, want %s", k.window, k.typ, k.category, g, w))
		}
	}
	slices.Sort(bad)
	return bad
}

// A view 3 days old counts in the week, the month and the 90 days; one
// 89 days old in the 90 days alone; one 91 days old is rejected for the
// retention. Re-sent, the accepted ones are duplicates, and so is every
// one of 3,000 events spread over 89 days (more than the 2,048 ids a
// profile remembered before).
func TestLongMemoryOldEventsCountOnce(t *testing.T) {
	rs := redistest.Start(t)
	e := nudgedEnv(t, startNudged(t, buildNudged(t), "--redis-addr", rs.Addr))

	const user = "long-memory"
	threeDays := ev(user, "view", "phones", 3*day)
	nearlyOld := ev(user, "view", "laptops", 89*day)
	tooOld := ev(user, "view", "phones", 91*day)
	batch := []*nudgev1.Event{threeDays, nearlyOld, tooOld}
	first := e.publish(t, batch...)
	wantStatus(t, first.Results[0], applied)
	wantStatus(t, first.Results[1], applied)
	wantStatus(t, first.Results[2], rejected)
	if r := first.Results[2].Reason; !strings.Contains(r, "retention") || !strings.Contains(r, "90d") {
		t.Errorf("event 91 days old: reason %q, want the retention of 90d", r)
	}

	p, before, after, err := profileBracketed(ctxT(t), e.prof, user)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range checkLongCounts(p, counted(batch[:2]), before, after) {
		t.Error(bad)
	}
	// Spelled out, for the reader: the week and the month hold the 3-day
	// view, the 90 days both, a day neither.
	for _, c := range []struct {
		category string
		window   time.Duration
		want     uint64
	}{
		{"phones", day, 0}, {"phones", week, 1}, {"phones", month, 1}, {"phones", retention, 1},
		{"laptops", week, 0}, {"laptops", month, 0}, {"laptops", retention, 1},
		{"", week, 1}, {"", retention, 2},
	} {
		if got := count(t, p, "view", c.category, c.window); got != c.want {
			t.Errorf("views of %q in %v = %d, want %d", c.category, c.window, got, c.want)
		}
	}

	again := e.publish(t, batch...)
	wantStatus(t, again.Results[0], duplicate)
	wantStatus(t, again.Results[1], duplicate)
	wantStatus(t, again.Results[2], rejected)
	if p2 := e.profile(t, user); p2.Version != p.Version || p2.Totals["view"] != 2 {
		t.Errorf("after the re-send: version %d (was %d), %d views; want unchanged, 2", p2.Version, p.Version, p2.Totals["view"])
	}

	// Many old events: every one is remembered, whatever its age.
	const heavy, many = "long-memory-heavy", 3000
	r := rand.New(rand.NewPCG(19, 3))
	var evs []*nudgev1.Event
	for range many {
		ago := time.Hour + time.Duration(r.Int64N(int64(89*day-time.Hour)))
		evs = append(evs, ev(heavy, "view", backfillCategories[r.IntN(len(backfillCategories))], ago))
	}
	for _, res := range e.publish(t, evs...).Results {
		wantStatus(t, res, applied)
	}
	dups := 0
	for _, res := range e.publish(t, evs...).Results {
		if res.Status == duplicate {
			dups++
		}
	}
	if dups != many {
		t.Errorf("re-sent %d events spread over 89 days: %d duplicates, want all", many, dups)
	}
	p, before, after, err = profileBracketed(ctxT(t), e.prof, heavy)
	if err != nil {
		t.Fatal(err)
	}
	if p.Totals["view"] != many {
		t.Errorf("%s: %d views, want %d", heavy, p.Totals["view"], many)
	}
	for _, bad := range checkLongCounts(p, counted(evs), before, after) {
		t.Error(bad)
	}
}

// The backfill: 10,000 users with 100 events each.
const (
	backfillUsers   = 10_000
	backfillPerUser = 100
	// backfillRun is how many of a user's events follow each other in
	// the file: the file goes round the users backfillPerUser/backfillRun
	// times, so every profile is read and written again in about as many
	// batches, its events in random time order.
	backfillRun = 10
	// backfillSample: the windowed counts of every backfillSample-th user
	// are checked (200 users); the totals of all.
	backfillSample = 50
	// backfillSpan is how far back the events go: 30 days but an hour,
	// so that the month window holds them all while the test runs.
	backfillSpan = month - time.Hour
)

var (
	backfillTypes      = []string{"view", "click", "add_to_cart"}
	backfillCategories = []string{"phones", "laptops", "tv", "shoes", "books"}
)

// backfillEvents are user u's events, from a generator seeded with u so
// that they can be made again to check the counts instead of being kept:
// types and categories uniform, event times uniform over backfillSpan
// before t0. Event i of user u has the id bf-<u>-<i>.
func backfillEvents(u int, t0 time.Time, out []countedEvent) []countedEvent {
	r := rand.New(rand.NewPCG(2026, uint64(u)))
	for range backfillPerUser {
		out = append(out, countedEvent{
			at:       t0.Add(-time.Duration(r.Int64N(int64(backfillSpan)))).Truncate(time.Millisecond),
			typ:      backfillTypes[r.IntN(len(backfillTypes))],
			category: backfillCategories[r.IntN(len(backfillCategories))],
		})
	}
	return out
}

// writeBackfill writes every user's events to a JSONL file for nudgectl
// send, in runs of backfillRun events per user.
func writeBackfill(t *testing.T, path string, t0 time.Time) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	all := make([]countedEvent, 0, backfillUsers*backfillPerUser)
	for u := range backfillUsers {
		all = backfillEvents(u, t0, all)
	}
	var line []byte
	for run := 0; run < backfillPerUser; run += backfillRun {
		for u := range backfillUsers {
			for i := run; i < run+backfillRun; i++ {
				e := &all[u*backfillPerUser+i]
				// By hand rather than protojson: a million lines under -race.
				line = append(line[:0], `{"event_id":"bf-`...)
				line = strconv.AppendInt(line, int64(u), 10)
				line = append(line, '-')
				line = strconv.AppendInt(line, int64(i), 10)
				line = append(line, `","user_id":"bf-`...)
				line = strconv.AppendInt(line, int64(u), 10)
				line = append(line, `","type":"`...)
				line = append(line, e.typ...)
				line = append(line, `","category":"`...)
				line = append(line, e.category...)
				line = append(line, `","occurred_at":"`...)
				line = e.at.UTC().AppendFormat(line, "2006-01-02T15:04:05.000Z07:00")
				line = append(line, "\"}\n"...)
				if _, err := w.Write(line); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// sendSummary is nudgectl send's --json summary.
type sendSummary struct {
	Lines, Malformed                                int
	Published, Applied, Duplicate, Rejected, Failed uint64
	Seconds                                         float64
}

// ctlSend replays a JSONL file with the built nudgectl, within ctx, and
// returns its summary.
func ctlSend(t *testing.T, ctx context.Context, ctl, addr, path string, args ...string) sendSummary {
	t.Helper()
	cmd := exec.CommandContext(ctx, ctl, append([]string{"send", path, "--addr", addr, "--json", "--quiet"}, args...)...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var s sendSummary
	if jerr := json.Unmarshal([]byte(out.String()), &s); jerr != nil || err != nil {
		t.Fatalf("nudgectl send %s: %v\nstdout: %s\nstderr: %s", filepath.Base(path), err, out.String(), errOut.String())
	}
	return s
}

// untilDeadline is the test's context, ending a little before the test's
// deadline (go test -timeout) so that a stuck command fails the test
// with its output rather than the whole binary with a panic.
func untilDeadline(t *testing.T) context.Context {
	t.Helper()
	ctx := t.Context()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-10*time.Second))
		t.Cleanup(cancel)
	}
	return ctx
}

// A backfill of a million events over the last 30 days, sent twice with
// nudgectl send: the first pass applies every event, the second finds
// every one a duplicate, and the profiles count exactly the events: the
// totals of every user, and the week, month and 90-day counts per type
// and category of a sample as the tiers' documented resolution says.
// About a minute on 2 cores.
func TestLongMemoryBackfillMillionEventsTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("a million events: not with -short")
	}
	nudgedBin, ctl := buildNudged(t), buildCommand(t, "nudgectl")
	rs := redistest.Start(t)
	n := startNudged(t, nudgedBin, "--redis-addr", rs.Addr)
	e := nudgedEnv(t, n)
	ctx := untilDeadline(t)

	t0 := time.Now()
	path := filepath.Join(t.TempDir(), "backfill.jsonl")
	writeBackfill(t, path, t0)
	const total = backfillUsers * backfillPerUser
	t.Logf("wrote %d events in %v", total, time.Since(t0).Round(time.Millisecond))

	first := ctlSend(t, ctx, ctl, n.addr, path)
	if first.Lines != total || first.Published != total || first.Applied != total || first.Duplicate+first.Rejected+first.Failed+uint64(first.Malformed) != 0 {
		t.Fatalf("first pass: %+v, want all %d applied", first, total)
	}
	second := ctlSend(t, ctx, ctl, n.addr, path)
	if second.Published != total || second.Duplicate != total || second.Applied+second.Rejected+second.Failed != 0 {
		t.Fatalf("second pass: %+v, want all %d duplicates", second, total)
	}
	t.Logf("first pass %.1fs, second %.1fs", first.Seconds, second.Seconds)

	// Every profile, from 8 callers: its total, and the counts of a sample.
	read := time.Now()
	var (
		next, sum atomic.Int64
		mu        sync.Mutex
		failures  []string
		wg        sync.WaitGroup
	)
	fail := func(format string, a ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, a...))
		mu.Unlock()
	}
	for range 8 {
		wg.Go(func() {
			for u := int(next.Add(1) - 1); u < backfillUsers && ctx.Err() == nil; u = int(next.Add(1) - 1) {
				user := "bf-" + strconv.Itoa(u)
				p, before, after, err := profileBracketed(ctx, e.prof, user)
				if err != nil {
					fail("GetProfile(%s): %v", user, err)
					return
				}
				var n uint64
				for _, c := range p.Totals {
					n += c
				}
				sum.Add(int64(n))
				if n != backfillPerUser {
					fail("%s: %d events counted, want %d", user, n, backfillPerUser)
				}
				if u%backfillSample == 0 {
					for _, bad := range checkLongCounts(p, backfillEvents(u, t0, nil), before, after) {
						fail("%s: %s", user, bad)
					}
				}
			}
		})
	}
	wg.Wait()
	t.Logf("read %d profiles in %v", backfillUsers, time.Since(read).Round(time.Millisecond))
	for i, f := range failures {
		if i == 20 {
			t.Errorf("... and %d more", len(failures)-i)
			break
		}
		t.Error(f)
	}
	if got := sum.Load(); got != total {
		t.Errorf("the profiles count %d events, want %d", got, total)
	}
	if ctx.Err() != nil {
		t.Fatalf("out of time reading the profiles: %v", ctx.Err())
	}
}
