package integration

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/internal/redistest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// metricWith sums the samples of metric name whose labels contain label
// (e.g. `result="hit"`).
func metricWith(t *testing.T, scrape, name, label string) float64 {
	t.Helper()
	var sum float64
	for _, m := range regexp.MustCompile(`(?m)^`+name+`\{([^}]*)\} (\S+)$`).FindAllStringSubmatch(scrape, -1) {
		if !strings.Contains(m[1], label) {
			continue
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		sum += v
	}
	return sum
}

// readYourWrites drives two instances: every event goes through A, and
// every decision about its user is asked of B with the version A
// acknowledged as min_profile_version, after B was made to cache the
// user's previous version. Every decision that is not degraded must be on
// a profile at least that recent. Then every user gets one more event
// through A that B is not told of; once the near-cache's freshness bound
// has passed, B must decide on that version without being told it. chaos, if
// not nil, runs between rounds (it may cut B's tracking or its Redis).
func readYourWrites(ctx context.Context, t *testing.T, a, b *nudged, users, rounds int, chaos func(round int)) (hits float64) {
	t.Helper()
	ingest := nudgev1.NewIngestServiceClient(dial(t, a.addr))
	decide := nudgev1.NewDecisionServiceClient(dial(t, b.addr))
	acked := make(map[string]uint64)
	degraded := 0
	ask := func(user string, min uint64) *nudgev1.GetDecisionResponse {
		t.Helper()
		resp, err := decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{
			UserId: user, Channel: "web", MinProfileVersion: min, Budget: durationpb.New(time.Second),
		})
		if err != nil {
			t.Fatalf("GetDecision(%s): %v", user, err)
		}
		return resp
	}
	for r := range rounds {
		if chaos != nil {
			chaos(r)
		}
		for u := range users {
			user := fmt.Sprintf("ryw-%d", u)
			ask(user, 0) // B caches what it has
			resp, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{ev(user, "view", "phones", time.Minute)}})
			if err != nil {
				t.Fatalf("Publish: %v", err)
			}
			res := resp.GetResults()[0]
			if res.GetStatus() != nudgev1.EventStatus_EVENT_STATUS_APPLIED {
				t.Fatalf("event of %s: %v", user, res)
			}
			v := res.GetProfileVersion()
			acked[user] = v
			d := ask(user, v)
			switch {
			case d.GetDecision().GetDegraded():
				degraded++
			case d.GetDecision().GetStale() || d.GetProfileVersion() < v:
				t.Fatalf("round %d: %s acknowledged at version %d, decided at %d (stale %v)", r, user, v, d.GetProfileVersion(), d.GetDecision().GetStale())
			}
		}
	}
	// A last round B is not told of: its cached copies are now stale, and
	// only Redis's invalidations can tell it.
	for u := range users {
		user := fmt.Sprintf("ryw-%d", u)
		resp, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{ev(user, "view", "phones", time.Minute)}})
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
		acked[user] = resp.GetResults()[0].GetProfileVersion()
	}
	// Past the freshness bound (near_cache.max_silence, 250ms), B serves
	// from its cache only after a heartbeat sent later than every write
	// acknowledged so far came back, and so after their invalidations: a
	// guarantee, not a hope.
	time.Sleep(300 * time.Millisecond)
	for user, v := range acked {
		d := ask(user, 0)
		if !d.GetDecision().GetDegraded() && d.GetProfileVersion() != v {
			t.Errorf("%s: last acknowledged version %d, B decided on %d after the freshness bound", user, v, d.GetProfileVersion())
		}
	}
	scrape := httpGet(t, b.metrics)
	hits = metricWith(t, scrape, "nudge_near_cache_reads_total", `result="hit"`)
	t.Logf("%d users × %d rounds: %d decisions degraded; B's near-cache: %v hits, %v misses, %v bypasses, %v refused, %v tracking failures",
		users, rounds, degraded, hits,
		metricWith(t, scrape, "nudge_near_cache_reads_total", `result="miss"`),
		metricWith(t, scrape, "nudge_near_cache_reads_total", `result="bypass"`),
		metricValue(t, scrape, "nudge_near_cache_refused_total"),
		metricValue(t, scrape, "nudge_near_cache_tracking_failures_total"))
	return hits
}

// Two nudged on one Redis (standalone, and a 3-master cluster): a decision
// asked of B with the version A acknowledged is never made on an older
// profile, though B serves decisions from its near-cache.
func TestNudgedNearCacheReadYourWrites(t *testing.T) {
	bin := buildNudged(t)
	for _, tc := range []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"standalone", func(t *testing.T) []string { return []string{"--redis-addr", redistest.Start(t).Addr} }},
		{"cluster", func(t *testing.T) []string {
			return []string{"--redis-cluster", strings.Join(redistest.StartCluster(t, 3).Addrs(), ",")}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(tc.args(t), "--metrics-listen", "127.0.0.1:0")
			a, b := startNudged(t, bin, args...), startNudged(t, bin, args...)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			if hits := readYourWrites(ctx, t, a, b, 50, 6, nil); hits == 0 {
				t.Error("B's near-cache served no decision")
			}
		})
	}
}

// Chaos: B's tracking connection is killed by Redis (CLIENT KILL), and
// B's whole link to Redis is cut by a proxy, while events flow through A.
// No decision is made on a profile older than the last write acknowledged
// before it was asked, and after the freshness bound B knows every write.
func TestChaosNearCacheTrackingCut(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	proxy := startProxy(t, rs.Addr)
	a := startNudged(t, bin, "--redis-addr", rs.Addr, "--metrics-listen", "127.0.0.1:0")
	b := startNudged(t, bin, "--redis-addr", proxy.Listen, "--metrics-listen", "127.0.0.1:0",
		"--near-cache-max-silence", "250ms", "--breaker-cooldown", "10ms")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	kills, cuts := 0, 0
	chaos := func(round int) {
		switch round % 3 {
		case 1: // the invalidation connection only
			if killTracking(ctx, t, rdb) {
				kills++
			}
		case 2: // everything B has with Redis, for a moment
			proxy.Stop()
			cuts++
			time.Sleep(50 * time.Millisecond)
			if err := proxy.Start(); err != nil {
				t.Fatalf("restart the proxy: %v", err)
			}
		}
	}
	readYourWrites(ctx, t, a, b, 40, chaosSize(9, 30), chaos)
	failures := metricValue(t, httpGet(t, b.metrics), "nudge_near_cache_tracking_failures_total")
	t.Logf("%d tracking connections killed, %d proxy cuts; B counted %v tracking failures", kills, cuts, failures)
	if kills == 0 || failures < float64(kills) {
		t.Errorf("%d kills, %v tracking failures: the chaos did not reach the tracking connection", kills, failures)
	}
}

// killTracking kills the nudge-tracking connections Redis has, and
// reports whether there was one.
func killTracking(ctx context.Context, t *testing.T, rdb *redis.Client) bool {
	t.Helper()
	list, err := rdb.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	killed := false
	for _, line := range strings.Split(list, "\n") {
		if !strings.Contains(line, "name=nudge-tracking") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				if err := rdb.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err == nil {
					killed = true
				}
			}
		}
	}
	return killed
}
