package integration

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/internal/daytime"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The chaos suite (issue 7): real redis-server and nudged processes, faults
// injected on loopback, and a checker independent of the code under test
// (it reads Redis with its own wire-format reader). `make chaos-short`
// runs the short form (part of `make test`); `make chaos` passes
// -chaos.full for the sizes of RELIABILITY.md.

var chaosFull = flag.Bool("chaos.full", false, "run the chaos scenarios at full size (make chaos)")

// chaosSize picks the short or the full figure.
func chaosSize(short, full int) int {
	if *chaosFull {
		return full
	}
	return short
}

// ledger records, per event id, what a producer sent and what the server
// acknowledged, for the checker.
type ledger struct {
	mu    sync.Mutex
	sent  map[string]string // event id -> user
	acked map[string]nudgev1.EventStatus
}

func newLedger() *ledger {
	return &ledger{sent: map[string]string{}, acked: map[string]nudgev1.EventStatus{}}
}

func (l *ledger) send(id, user string) {
	l.mu.Lock()
	l.sent[id] = user
	l.mu.Unlock()
}

// result records the last status acknowledged for an event (a re-sent
// event that was applied before is DUPLICATE the second time).
func (l *ledger) result(r *nudgev1.EventResult) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, ok := l.acked[r.GetEventId()]; !ok || prev != nudgev1.EventStatus_EVENT_STATUS_APPLIED {
		l.acked[r.GetEventId()] = r.GetStatus()
	}
}

// verdict is the checker's result, in the style of Kafka's and Flink's
// exactly-once validators.
type verdict struct {
	sent, acked, stored     int
	lost, doubleCounted     int
	actions, duplicateActns int
	unacked                 int
	// The coupon trigger's campaign: users exposed in its counters, and
	// the distinct users of its actions in the outbox (each user's first
	// action opens the window; the producer's events are minutes apart).
	exposed, actionUsers int
}

func (v verdict) String() string {
	return fmt.Sprintf("sent %d, acknowledged %d, counted in Redis %d: lost %d, double_counted %d, unacknowledged %d; actions %d, duplicate actions %d; coupon exposures %d for %d users with its actions",
		v.sent, v.acked, v.stored, v.lost, v.doubleCounted, v.unacked, v.actions, v.duplicateActns, v.exposed, v.actionUsers)
}

// check compares, per user, the view counts stored in Redis with the
// events acknowledged (APPLIED or DUPLICATE) and sent: a user counting
// fewer than its acknowledged events lost some, one counting more than it
// was sent counted some twice. Every outbox entry's action id must be
// unique.
func (l *ledger) check(ctx context.Context, t *testing.T, rdb redis.UniversalClient) verdict {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	sentPer, ackedPer := map[string]int{}, map[string]int{}
	var v verdict
	for id, u := range l.sent {
		sentPer[u]++
		v.sent++
		switch l.acked[id] {
		case nudgev1.EventStatus_EVENT_STATUS_APPLIED, nudgev1.EventStatus_EVENT_STATUS_DUPLICATE:
			ackedPer[u]++
			v.acked++
		default:
			v.unacked++
		}
	}
	stored := storedViews(ctx, t, rdb)
	for u, n := range sentPer {
		s := stored[u]
		v.stored += s
		v.lost += max(0, ackedPer[u]-s)
		v.doubleCounted += max(0, s-n)
	}
	entries := outboxEntries(ctx, t, rdb)
	v.actions, v.duplicateActns = countActions(entries)
	v.exposed, v.actionUsers = couponExposures(ctx, t, rdb, entries)
	return v
}

// couponTrigger is the bundled rules' trigger the producer's views fire.
const couponTrigger = "category-interest-coupon"

// couponExposures reads the coupon's treated exposures from the
// campaign counters (the default 1,024 buckets), and counts the distinct
// users of its actions among the outbox entries: written in the same
// MULTI, they agree.
func couponExposures(ctx context.Context, t *testing.T, rdb redis.UniversalClient, entries []map[string]any) (exposed, users int) {
	t.Helper()
	counts, err := redisstore.New(rdb, redisstore.Options{}).Counts(ctx, []string{couponTrigger})
	if err != nil {
		t.Fatalf("campaign counters: %v", err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if e["trigger_id"] == couponTrigger {
			u, _ := e["user_id"].(string)
			seen[u] = true
		}
	}
	return int(counts[couponTrigger].Treated.Exposed), len(seen)
}

// scanKeys calls fn for every key matching pattern, on every master of a
// cluster.
func scanKeys(ctx context.Context, t *testing.T, rdb redis.UniversalClient, pattern string, fn func(key string)) {
	t.Helper()
	var mu sync.Mutex
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			fn(iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, scan)
	case *redis.Client:
		err = scan(ctx, c)
	default:
		t.Fatalf("scanKeys: unexpected client %T", rdb)
	}
	if err != nil {
		t.Fatalf("SCAN %s: %v", pattern, err)
	}
}

// storedViews reads every profile key and returns each user's all-time
// "view" total, decoding the stored form (a version byte, then protobuf
// wire format, totals in field 4 as {1: type, 2: count}) on its own.
func storedViews(ctx context.Context, t *testing.T, rdb redis.UniversalClient) map[string]int {
	t.Helper()
	var keys []string
	scanKeys(ctx, t, rdb, "nudge:*:p:*", func(key string) { keys = append(keys, key) })
	out := map[string]int{}
	for _, key := range keys {
		raw, err := rdb.Get(ctx, key).Bytes()
		if err != nil {
			t.Fatalf("GET %s: %v", key, err)
		}
		user := key[strings.Index(key, ":p:")+3:]
		out[user] = wireViews(t, key, raw)
	}
	return out
}

func wireViews(t *testing.T, key string, raw []byte) int {
	t.Helper()
	if len(raw) == 0 || raw[0] != 0x01 {
		t.Fatalf("%s: not a version 1 profile", key)
	}
	b := raw[1:]
	views := 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("%s: bad tag", key)
		}
		b = b[n:]
		if num == 4 && typ == protowire.BytesType {
			msg, m := protowire.ConsumeBytes(b)
			if m < 0 {
				t.Fatalf("%s: bad totals entry", key)
			}
			var name string
			var count uint64
			for len(msg) > 0 {
				fn, ft, k := protowire.ConsumeTag(msg)
				msg = msg[k:]
				switch {
				case fn == 1 && ft == protowire.BytesType:
					s, k := protowire.ConsumeBytes(msg)
					name, msg = string(s), msg[k:]
				case fn == 2 && ft == protowire.VarintType:
					c, k := protowire.ConsumeVarint(msg)
					count, msg = c, msg[k:]
				default:
					k := protowire.ConsumeFieldValue(fn, ft, msg)
					msg = msg[k:]
				}
			}
			if name == "view" {
				views = int(count)
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			t.Fatalf("%s: bad field %d", key, num)
		}
		b = b[m:]
	}
	return views
}

// countActions counts the outbox entries and the repeated action ids
// among them.
func countActions(entries []map[string]any) (total, duplicates int) {
	seen := map[string]bool{}
	for _, e := range entries {
		id, _ := e["action_id"].(string)
		total++
		if seen[id] {
			duplicates++
		}
		seen[id] = true
	}
	return total, duplicates
}

// outboxActionIDs returns the action id of every outbox entry.
func outboxActionIDs(ctx context.Context, t *testing.T, rdb redis.UniversalClient) []string {
	t.Helper()
	var ids []string
	for _, e := range outboxEntries(ctx, t, rdb) {
		id, _ := e["action_id"].(string)
		ids = append(ids, id)
	}
	return ids
}

// outboxEntries returns the fields of every entry of every outbox stream.
func outboxEntries(ctx context.Context, t *testing.T, rdb redis.UniversalClient) []map[string]any {
	t.Helper()
	var streams []string
	scanKeys(ctx, t, rdb, "nudge:*:out", func(key string) { streams = append(streams, key) })
	var entries []map[string]any
	for _, key := range streams {
		msgs, err := rdb.XRange(ctx, key, "-", "+").Result()
		if err != nil {
			t.Fatalf("XRANGE %s: %v", key, err)
		}
		for _, m := range msgs {
			entries = append(entries, m.Values)
		}
	}
	return entries
}

// chaosProducer streams view events (3 per user and category, so the
// bundled coupon trigger fires) over publishers that reconnect fast and
// re-send what was not acknowledged.
type chaosProducer struct {
	pubs []*client.Publisher
	led  *ledger
}

func newChaosProducer(t *testing.T, addrs []string, streams, batch int, led *ledger) *chaosProducer {
	t.Helper()
	p := &chaosProducer{led: led}
	for _, addr := range addrs {
		c, err := client.Dial(addr, client.WithInsecure(), client.WithDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		for range streams / len(addrs) {
			p.pubs = append(p.pubs, c.NewPublisher(client.MaxBatch(batch), client.Linger(time.Millisecond), client.ReconnectBackoff(20*time.Millisecond, 300*time.Millisecond),
				client.OnResult(led.result)))
		}
	}
	return p
}

// run publishes events (ids <tag>-<i>) for users in round robin, over the
// publishers in round robin (so every stream, and every nudged, carries
// every user), and returns once every one is acknowledged. It may run on
// a goroutine of its own: it reports failures as an error.
func (p *chaosProducer) run(ctx context.Context, tag string, events, users int) error {
	at := timestamppb.New(time.Now().Add(-time.Minute))
	evs := make([]*nudgev1.Event, events)
	for i := range evs {
		user := fmt.Sprintf("chaos-%s-%d", tag, i%users)
		evs[i] = &nudgev1.Event{EventId: fmt.Sprintf("%s-%d", tag, i), UserId: user, Type: "view", Category: "c" + strconv.Itoa((i/users)%4), OccurredAt: at}
	}
	return p.publishAll(ctx, evs)
}

// publishAll publishes events over the producer's streams in round robin
// and returns once every one is acknowledged.
func (p *chaosProducer) publishAll(ctx context.Context, evs []*nudgev1.Event) error {
	for i, ev := range evs {
		p.led.send(ev.EventId, ev.UserId)
		if err := p.pubs[i%len(p.pubs)].Publish(ctx, ev); err != nil {
			return fmt.Errorf("publish %s: %w", ev.EventId, err)
		}
	}
	for _, pub := range p.pubs {
		if err := pub.Flush(ctx); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
	}
	return nil
}

// start runs run on its own goroutine; the channel closes when it
// returns, its error reported on t.
func (p *chaosProducer) start(ctx context.Context, t *testing.T, tag string, events, users int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.run(ctx, tag, events, users); err != nil {
			t.Error(err)
		}
	}()
	return done
}

// waitAcked waits until n events are acknowledged, and fails the test if
// the producer finishes first (the fault would come too late).
func (p *chaosProducer) waitAcked(ctx context.Context, t *testing.T, n uint64, done <-chan struct{}) {
	t.Helper()
	for st := p.stats(); st.Applied+st.Duplicate < n; st = p.stats() {
		select {
		case <-done:
			t.Fatalf("the stream finished before %d events were acknowledged", n)
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(5 * time.Millisecond): // polling the producer's progress
		}
	}
}

func (p *chaosProducer) stats() client.Stats { return sumStats(p.pubs) }

// sumStats adds up publishers' stats.
func sumStats(pubs []*client.Publisher) client.Stats {
	var s client.Stats
	for _, pub := range pubs {
		x := pub.Stats()
		s.Published += x.Published
		s.Acked += x.Acked
		s.Applied += x.Applied
		s.Duplicate += x.Duplicate
		s.Rejected += x.Rejected
		s.Failed += x.Failed
		s.Resent += x.Resent
		s.Reconnects += x.Reconnects
	}
	return s
}

// wantExact fails the test unless the verdict is exact and complete.
func wantExact(t *testing.T, v verdict) {
	t.Helper()
	t.Logf("checker: %v", v)
	if v.lost != 0 || v.doubleCounted != 0 || v.unacked != 0 || v.duplicateActns != 0 || v.stored != v.sent || v.exposed != v.actionUsers {
		t.Errorf("not exactly once: %v", v)
	}
}

// startProxy starts an in-process toxiproxy on a free loopback port in
// front of upstream, stopped when the test ends; its Listen is the address
// to give nudged.
func startProxy(t *testing.T, upstream string) *toxiproxy.Proxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	proxy := toxiproxy.NewProxy(srv, "redis", "127.0.0.1:0", upstream)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)
	return proxy
}

// freeLoopbackAddr returns a loopback address nothing listens on, so that
// a restarted nudged can come back on the same one.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Scenario 1: nudged is killed with SIGKILL several times while producers
// stream; they reconnect to the restarted process and re-send what was not
// acknowledged. Nothing acknowledged is lost, nothing counts twice, no
// action is written twice.
func TestChaosKillNudged(t *testing.T) {
	events, users, kills := chaosSize(40_000, 200_000), chaosSize(2_000, 10_000), chaosSize(2, 5)
	rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "everysec")
	bin := buildNudged(t)
	addr := freeLoopbackAddr(t)
	args := []string{"--listen", addr, "--redis-addr", rs.Addr}
	n := startNudged(t, bin, args...)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	led := newLedger()
	prod := newChaosProducer(t, []string{addr}, 4, 500, led)

	done := prod.start(ctx, t, "k", events, users)
	// Kill when a share of the events has been acknowledged, k/(kills+1).
	for k := 1; k <= kills; k++ {
		prod.waitAcked(ctx, t, uint64(events*k/(kills+1)), done)
		if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-n.done
		n = startNudged(t, bin, args...)
	}
	<-done
	st := prod.stats()
	t.Logf("%d events over %d users, nudged killed %d times: publisher %+v", events, users, kills, st)
	if st.Failed != 0 || st.Reconnects < uint64(kills) {
		t.Errorf("publisher stats %+v: want no failure and at least %d reconnects", st, kills)
	}
	wantExact(t, led.check(ctx, t, rs.Client(t)))
}

// Scenario 2: the connections between nudged and Redis are cut mid-reply
// (a toxiproxy limit_data toxic closes a connection after a random number
// of reply bytes), including after EXEC ran: the store retries, and a lost
// EXEC reply comes back as DUPLICATE. Counts stay exact.
func TestChaosCutRedisReplies(t *testing.T) {
	events, users, cuts := chaosSize(20_000, 100_000), chaosSize(1_000, 5_000), chaosSize(100, 1_000)
	rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "everysec")
	proxy := startProxy(t, rs.Addr)
	n := startNudged(t, buildNudged(t), "--redis-addr", proxy.Listen, "--metrics-listen", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	led := newLedger()
	prod := newChaosProducer(t, []string{n.addr}, 4, 500, led)

	done := prod.start(ctx, t, "x", events, users)
	rng := rand.New(rand.NewPCG(7, 7))
	made := 0
cutting:
	for made < cuts {
		select {
		case <-done:
			break cutting
		default:
		}
		// Each toxic lets a connection carry some bytes, then closes it;
		// removing it leaves new connections alone.
		body := fmt.Sprintf(`{"name":"cut","type":"limit_data","stream":"downstream","attributes":{"bytes":%d}}`, 64+rng.IntN(4096))
		if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(5+rng.IntN(20)) * time.Millisecond) // the fault's duration, not a wait for a result
		if err := proxy.Toxics.RemoveToxic(ctx, "cut"); err != nil {
			t.Fatal(err)
		}
		made++
		time.Sleep(time.Duration(10+rng.IntN(40)) * time.Millisecond)
	}
	<-done
	st := prod.stats()
	t.Logf("%d events over %d users, %d reply cuts: publisher %+v", events, users, made, st)
	if made == 0 {
		t.Error("no cut was made before the stream finished")
	}
	if st.Failed != 0 {
		t.Errorf("publisher stats %+v: want no failure", st)
	}
	scrape := httpGet(t, n.metrics)
	t.Logf("store error retries: %v", metricValue(t, scrape, "nudge_store_error_retries_total"))
	wantExact(t, led.check(ctx, t, rs.Client(t)))
}

// Scenario 3: hot users. 64 streams through two nudged send every event to
// one of 10 users: the two processes conflict on every user (WATCH), and
// each merges its own streams' events per user. Counts stay exact. Run
// again with 2 attempts per user (redis.max_attempts): users then run out
// of retries, which nudged reports (the stream ends ABORTED), the producer
// re-sends, and the events are applied: never lost.
func TestChaosHotUsers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		attempts int
	}{{"default attempts", 0}, {"2 attempts", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			events := chaosSize(10_000, 50_000)
			rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "everysec")
			bin := buildNudged(t)
			args := []string{"--redis-addr", rs.Addr, "--metrics-listen", "127.0.0.1:0"}
			if tc.attempts > 0 {
				args = append(args, "--redis-max-attempts", strconv.Itoa(tc.attempts))
			}
			a, b := startNudged(t, bin, args...), startNudged(t, bin, args...)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			led := newLedger()
			prod := newChaosProducer(t, []string{a.addr, b.addr}, 64, 5, led)
			if err := prod.run(ctx, "h", events, 10); err != nil {
				t.Fatal(err)
			}
			st := prod.stats()
			var conflicts, exhausted, txns float64
			for _, n := range []*nudged{a, b} {
				scrape := httpGet(t, n.metrics)
				conflicts += metricValue(t, scrape, "nudge_store_conflicts_total")
				exhausted += metricValue(t, scrape, "nudge_store_retries_exhausted_total")
				txns += metricValue(t, scrape, "nudge_store_transactions_total")
			}
			t.Logf("%d events to 10 users over 64 streams and 2 nudged, %s: publisher %+v; transactions %v, conflicts retried %v, users out of retries %v (answered ABORTED, re-sent)",
				events, tc.name, st, txns, conflicts, exhausted)
			if st.Failed != 0 {
				t.Errorf("publisher stats %+v: want no failure", st)
			}
			if conflicts == 0 {
				t.Error("no WATCH conflict between the two nudged: the hot users were not contended")
			}
			if tc.attempts > 0 && (exhausted == 0 || st.Resent == 0) {
				t.Errorf("%v users out of retries, %d events re-sent: with %d attempts, want retries exhausted and re-sent", exhausted, st.Resent, tc.attempts)
			}
			wantExact(t, led.check(ctx, t, rs.Client(t)))
		})
	}
}

// decideDuring calls GetDecision (budget 10 ms) one after the other until
// stop closes, and returns each call's latency; any call that does not
// answer (an error, not a degraded decision) fails the test.
func decideDuring(ctx context.Context, t *testing.T, addr string, stop <-chan struct{}) (lat []time.Duration, degraded int) {
	t.Helper()
	conn := dial(t, addr)
	dc := nudgev1.NewDecisionServiceClient(conn)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return lat, degraded
		default:
		}
		start := time.Now()
		resp, err := dc.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: fmt.Sprintf("chaos-r-%d", i%100), Channel: "sms"})
		lat = append(lat, time.Since(start))
		if err != nil {
			t.Errorf("decision %d: %v (want an answer, degraded if need be)", i, err)
			return lat, degraded
		}
		if resp.GetDecision().GetDegraded() {
			degraded++
		}
	}
}

// Scenarios 4 and 5: redis-server is killed with SIGKILL during ingest,
// stays down, then restarts from its AOF. Meanwhile decisions answer
// (degraded) within their budget and ingest answers UNAVAILABLE, which the
// producers retry until Redis is back. With appendfsync always, nothing
// acknowledged is lost; with everysec, the acknowledged events written in
// the last second before the kill may be: the test measures that window.
func TestChaosRedisKilled(t *testing.T) {
	for _, fsync := range []string{"always", "everysec"} {
		t.Run(fsync, func(t *testing.T) {
			events, users := chaosSize(20_000, 100_000), chaosSize(1_000, 5_000)
			down := time.Duration(chaosSize(2, 30)) * time.Second
			rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", fsync)
			n := startNudged(t, buildNudged(t), "--redis-addr", rs.Addr, "--decision-budget", "10ms")
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			led := newLedger()
			prod := newChaosProducer(t, []string{n.addr}, 4, 500, led)
			done := prod.start(ctx, t, "r", events, users)
			prod.waitAcked(ctx, t, uint64(events/3), done)
			before := prod.stats()
			rs.Stop() // SIGKILL
			stop := make(chan struct{})
			time.AfterFunc(down, func() { close(stop) })
			lat, degraded := decideDuring(ctx, t, n.addr, stop)
			rs.Restart(t)
			<-done

			slices.Sort(lat)
			p99 := lat[len(lat)*99/100]
			st := prod.stats()
			t.Logf("appendfsync %s: redis killed after %d acknowledged events, down %v: %d decisions answered (%d degraded), p50 %v, p99 %v, max %v; publisher %+v",
				fsync, before.Applied+before.Duplicate, down, len(lat), degraded, lat[len(lat)/2], p99, lat[len(lat)-1], st)
			if st.Failed != 0 {
				t.Errorf("publisher stats %+v: want no failure", st)
			}
			v := led.check(ctx, t, rs.Client(t))
			if fsync == "always" {
				wantExact(t, v)
				return
			}
			// everysec: a window of acknowledged writes may be lost; nothing
			// may count twice, and what was not acknowledged was re-sent.
			t.Logf("checker: %v", v)
			t.Logf("appendfsync everysec: %d acknowledged events lost in the kill (the unsynced window)", v.lost)
			if v.doubleCounted != 0 || v.unacked != 0 || v.duplicateActns != 0 {
				t.Errorf("not at most once per event: %v", v)
			}
		})
	}
}

// Scenario 7: SIGTERM while 50 streams are live. nudged stops within its
// drain timeout (in-flight batches answered, then each stream ends with
// UNAVAILABLE); the producers re-send the rest to a new nudged on the same
// address, and nothing is lost or counted twice.
func TestChaosSIGTERMDuringStreams(t *testing.T) {
	events, users := chaosSize(20_000, 100_000), chaosSize(1_000, 5_000)
	const drain = 5 * time.Second
	rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "everysec")
	bin := buildNudged(t)
	addr := freeLoopbackAddr(t)
	args := []string{"--listen", addr, "--redis-addr", rs.Addr, "--drain-timeout", drain.String()}
	n := startNudged(t, bin, args...)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	led := newLedger()
	prod := newChaosProducer(t, []string{addr}, 50, 100, led)
	done := prod.start(ctx, t, "g", events, users)
	prod.waitAcked(ctx, t, uint64(events/3), done)
	sent := time.Now()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("nudged exited with %v", err)
		}
	case <-time.After(drain + 5*time.Second):
		t.Fatalf("nudged still running %v after SIGTERM (drain timeout %v)", drain+5*time.Second, drain)
	}
	stopped := time.Since(sent)
	startNudged(t, bin, args...)
	<-done
	st := prod.stats()
	t.Logf("%d events over %d users on 50 streams: SIGTERM, stopped in %v (drain timeout %v), new nudged on the same address; publisher %+v",
		events, users, stopped.Round(time.Millisecond), drain, st)
	if st.Failed != 0 {
		t.Errorf("publisher stats %+v: want no failure", st)
	}
	wantExact(t, led.check(ctx, t, rs.Client(t)))
}

// Scenario 9: a broken rules file is reloaded (SIGHUP) while events and
// decisions flow: the reload is refused, the old rules keep serving, and
// no call fails.
func TestChaosBrokenRulesReload(t *testing.T) {
	events, users := chaosSize(20_000, 100_000), chaosSize(1_000, 5_000)
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, daytime.Rules(time.Now()), 0o644); err != nil {
		t.Fatal(err)
	}
	rs := redistest.Start(t)
	n := startNudged(t, buildNudged(t), "--redis-addr", rs.Addr, "--rules", rules, "--rules-reload", "50ms")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	admin := nudgev1.NewAdminServiceClient(dial(t, n.addr))
	before, err := admin.GetRules(ctx, &nudgev1.GetRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	led := newLedger()
	prod := newChaosProducer(t, []string{n.addr}, 4, 500, led)
	done := prod.start(ctx, t, "b", events, users)
	stop := make(chan struct{})
	decided := make(chan []time.Duration, 1)
	go func() {
		lat, _ := decideDuring(ctx, t, n.addr, stop)
		decided <- lat
	}()
	broken := 0
	minimum := time.After(time.Duration(chaosSize(2, 10)) * time.Second)
	for i := 0; ; i++ {
		select {
		case <-done:
			done = nil // keep going until the minimum duration too
			continue
		case <-minimum:
			minimum = nil
			continue
		default:
		}
		if done != nil || minimum != nil {
			body := []byte("version: 1\noffers:\n  - id: typo\n    when: profile.count(\"view\", 3) >= 1\n    template: t\n")
			if i%2 == 1 {
				body = []byte("offers: [unclosed\n")
			}
			if err := os.WriteFile(rules, body, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			broken++
			time.Sleep(20 * time.Millisecond) // the pace of the faults, not a wait for a result
			continue
		}
		break
	}
	close(stop)
	lat := <-decided
	after, err := admin.GetRules(ctx, &nudgev1.GetRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	st := prod.stats()
	t.Logf("%d events and %d decisions while %d broken rules files were written and signalled: rules version %s before, %s after; publisher %+v",
		events, len(lat), broken, before.GetVersion(), after.GetVersion(), st)
	if after.GetVersion() != before.GetVersion() {
		t.Errorf("rules version changed from %s to %s: a broken file replaced the rules in force", before.GetVersion(), after.GetVersion())
	}
	if broken == 0 {
		t.Error("no broken rules file was written before the stream finished")
	}
	if st.Failed != 0 || st.Rejected != 0 {
		t.Errorf("publisher stats %+v: want no failure and no rejection", st)
	}
	wantExact(t, led.check(ctx, t, rs.Client(t)))
}

// vmRSS is a process's resident memory in KiB.
func vmRSS(t *testing.T, pid int) int { return procStatusKiB(t, pid, "VmRSS") }

// procStatusKiB is a memory field of a process's /proc status (VmRSS,
// VmHWM, ...), in KiB.
func procStatusKiB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("%s of process %d: %v", field, pid, err)
			}
			return kb
		}
	}
	t.Fatalf("no %s in the status of process %d", field, pid)
	return 0
}

// Scenario 6: producers that send batches and never read the acks. The
// server answers each batch into the producer's HTTP/2 receive window;
// once that is full it stops reading the stream (at most
// limits.max_in_flight batches in work), flow control stops the producer,
// and its stream costs nothing more: the work such a producer can cause is
// bounded by its windows. Then a well-behaved producer on other streams
// gets every event applied, at its pace before the rude ones came, and
// nudged does not grow.
func TestChaosProducerStopsReadingAcks(t *testing.T) {
	rude, events, users := chaosSize(8, 32), chaosSize(20_000, 100_000), chaosSize(1_000, 5_000)
	rs := redistest.Start(t)
	n := startNudged(t, buildNudged(t), "--redis-addr", rs.Addr, "--metrics-listen", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	processed := func() float64 { return metricValue(t, httpGet(t, n.metrics), "nudge_events_total") }
	// The polite producer's pace alone, for comparison.
	led := newLedger()
	prod := newChaosProducer(t, []string{n.addr}, 4, 500, led)
	start := time.Now()
	if err := prod.run(ctx, "q", events, users); err != nil {
		t.Fatal(err)
	}
	alone := time.Since(start)
	rss0 := vmRSS(t, n.cmd.Process.Pid)

	// Each rude producer sends 500-event batches until its stream's
	// windows are full (Send blocks), bounded by a deadline.
	ingest := nudgev1.NewIngestServiceClient(dial(t, n.addr))
	at := timestamppb.New(time.Now().Add(-time.Minute))
	var sentBatches atomic.Int64
	var wg sync.WaitGroup
	for r := range rude {
		sctx, scancel := context.WithCancel(ctx)
		t.Cleanup(scancel)
		stream, err := ingest.Stream(sctx)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for seq := range 1000 {
				evs := make([]*nudgev1.Event, 500)
				for i := range evs {
					u := fmt.Sprintf("rude-%d-%d", r, i%50)
					evs[i] = &nudgev1.Event{EventId: fmt.Sprintf("rude-%d-%d-%d", r, seq, i), UserId: u, Type: "view", Category: "c0", OccurredAt: at}
				}
				if stream.Send(&nudgev1.StreamRequest{Seq: uint64(seq), Events: evs}) != nil {
					return
				}
				sentBatches.Add(1)
			}
		})
	}
	// Wait until the rude producers are stalled: no batch sent, and none
	// processed by nudged, for 500 ms. Until then nudged works through
	// what their windows hold (its 1 MiB receive window per stream, and
	// the acks their own receive windows take, grpc-go's up to 16 MiB).
	stallStart := time.Now()
	for last, lastDone, quiet := int64(-1), -1.0, 0; quiet < 10; {
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond): // polling the producers' progress
		}
		now, done := sentBatches.Load(), processed()
		if now == last && done == lastDone {
			quiet++
		} else {
			last, lastDone, quiet = now, done, 0
		}
	}
	stalledAfter, rudeEvents := time.Since(stallStart), processed()
	stalledRSS := vmRSS(t, n.cmd.Process.Pid)
	start = time.Now()
	if err := prod.run(ctx, "p", events, users); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	rss1 := vmRSS(t, n.cmd.Process.Pid)
	stalled := sentBatches.Load()
	t.Logf("%d producers sent %d batches of 500 events, read no ack and stalled; nudged processed %.0f of their events, then stopped reading them (%v after the stall began); then a polite producer's %d events took %v (%.0f events/s; %.0f alone before the rude ones came); nudged RSS %d MiB before, %d once they stalled, %d after",
		rude, stalled, rudeEvents, stalledAfter.Round(time.Millisecond), events, took.Round(time.Millisecond), float64(events)/took.Seconds(), float64(events)/alone.Seconds(), rss0/1024, stalledRSS/1024, rss1/1024)
	if stalled >= int64(rude)*1000 {
		t.Errorf("every rude batch was taken: nothing held the producers back")
	}
	if rss1-stalledRSS > 100*1024 {
		t.Errorf("nudged grew by %d MiB more while the stalled producers held their streams", (rss1-stalledRSS)/1024)
	}
	wantExact(t, led.check(ctx, t, rs.Client(t)))
	cancel()
	wg.Wait()
}

// Scenario 5, paused and slow: Redis paused (CLIENT PAUSE ALL) and then
// slow (50 ms of latency each way through toxiproxy) while producers
// stream and decisions are asked for. Every decision answers (degraded
// when the read misses its 10 ms budget) and counts stay exact.
func TestChaosRedisPausedAndSlow(t *testing.T) {
	events, users := chaosSize(10_000, 50_000), chaosSize(1_000, 5_000)
	fault := time.Duration(chaosSize(2, 30)) * time.Second
	rs := redistest.Start(t)
	proxy := startProxy(t, rs.Addr)
	n := startNudged(t, buildNudged(t), "--redis-addr", proxy.Listen, "--decision-budget", "10ms")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	led := newLedger()
	prod := newChaosProducer(t, []string{n.addr}, 4, 100, led)
	done := prod.start(ctx, t, "s", events, users)
	prod.waitAcked(ctx, t, uint64(events/10), done)

	for _, f := range []struct {
		name          string
		begin, finish func()
	}{
		{"paused", func() {
			ms := strconv.Itoa(int(fault.Milliseconds()))
			if err := rs.Client(t).Do(ctx, "CLIENT", "PAUSE", ms, "ALL").Err(); err != nil {
				t.Fatal(err)
			}
		}, func() {
			if err := rs.Client(t).Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
				t.Fatal(err)
			}
		}},
		{"slow (50 ms each way)", func() {
			if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"slow","type":"latency","stream":"downstream","attributes":{"latency":50}}`)); err != nil {
				t.Fatal(err)
			}
			if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"slow-up","type":"latency","stream":"upstream","attributes":{"latency":50}}`)); err != nil {
				t.Fatal(err)
			}
		}, func() {
			for _, name := range []string{"slow", "slow-up"} {
				if err := proxy.Toxics.RemoveToxic(ctx, name); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		f.begin()
		stop := make(chan struct{})
		time.AfterFunc(fault, func() { close(stop) })
		lat, degraded := decideDuring(ctx, t, n.addr, stop)
		f.finish()
		slices.Sort(lat)
		t.Logf("Redis %s for %v: %d decisions answered (%d degraded), p50 %v, p99 %v, max %v",
			f.name, fault, len(lat), degraded, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
		if degraded == 0 {
			t.Errorf("Redis %s: no decision degraded: the fault did not reach the reads", f.name)
		}
	}
	<-done
	st := prod.stats()
	t.Logf("%d events over %d users through the faults: publisher %+v", events, users, st)
	if st.Failed != 0 {
		t.Errorf("publisher stats %+v: want no failure", st)
	}
	wantExact(t, led.check(ctx, t, rs.Client(t)))
}
