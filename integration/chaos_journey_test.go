package integration

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The chaos scenarios of journeys (issue 15, RELIABILITY.md "Journeys"):
// timers pending in Redis, then a fault while they come due: nudged
// killed, two instances firing the same buckets, Redis restarted from its
// AOF, a cluster master failed over with WAIT. In each, every due timer
// whose cart was not bought fires exactly once and every cancelled one
// never; the checker (checkJourney) counts it from the outboxes.
//
// Each scenario first schedules the timers through a nudged that holds
// its fire (it polls its timers once an hour) and then stops it (or, in
// scenario 1, kills it): every purchase is in before any reminder can
// fire, whatever the machine's speed, so the expected reminders are
// exactly the users who did not buy.
// The carts' times are spread over seconds (journeyChaos.spread), so that
// the timers come due one after the other while the fault happens, not
// all in one poll.

// journeyChaos is a chaos scenario's workload, rules and Redis.
type journeyChaos struct {
	j      *cartJourney
	bin    string
	args   []string // --rules and the Redis flags
	rdb    redis.UniversalClient
	layout redisstore.Layout
	led    *ledger
	// pending is the timers left once the events are in: the users who
	// did not buy.
	pending int64
	// spread is the time the carts are spread over, ending when the
	// scheduling begins (base plus spread).
	spread time.Duration
	base   time.Time
}

// newJourneyChaos sizes the workload (chaosSize: 5,000 pending timers
// short, 100,000 full, as many users again who buy) and builds nudged.
// schedule dates the carts over the spread before it begins, in the order
// it sends them, so the timers come due between wait-spread (7 s short,
// 30 s full) and wait after it begins, and each cart is sent before it is
// due as long as sending all of them takes less than the wait (schedule
// checks it).
func newJourneyChaos(t *testing.T, tag string, rdb redis.UniversalClient, redisArgs ...string) *journeyChaos {
	t.Helper()
	pending := chaosSize(5_000, 100_000)
	wait := time.Duration(chaosSize(10, 60)) * time.Second
	c := &journeyChaos{
		bin:     buildNudged(t),
		args:    append([]string{"--rules", writeRules(t, cartRules(wait))}, redisArgs...),
		rdb:     rdb,
		layout:  redisstore.NewLayout(0), // nudged's default buckets
		led:     newLedger(),
		pending: int64(pending),
		spread:  time.Duration(chaosSize(3, 30)) * time.Second,
	}
	users := 2 * pending
	c.j = &cartJourney{tag: tag, users: users, wait: wait, cartAt: func(i int) time.Time {
		return c.base.Add(time.Duration(c.spread.Milliseconds()*int64(i)/int64(users)) * time.Millisecond) // whole ms, as timers store them
	}}
	return c
}

// start starts a nudged on the scenario's Redis and rules.
func (c *journeyChaos) start(t *testing.T, args ...string) *nudged {
	t.Helper()
	return startNudged(t, c.bin, append(append([]string{}, c.args...), args...)...)
}

// schedule starts a nudged that holds its fire and sends it every cart,
// then every purchase, over 4 reconnecting streams; it returns the
// running nudged once every event is acknowledged, every buyer's timer
// cancelled and the others pending, and no reminder sent yet.
func (c *journeyChaos) schedule(ctx context.Context, t *testing.T, args ...string) *nudged {
	t.Helper()
	n := c.start(t, append([]string{"--timers-poll", "1h"}, args...)...)
	prod := newChaosProducer(t, []string{n.addr}, 4, 500, c.led)
	began := time.Now()
	c.base = time.UnixMilli(began.Add(-c.spread).UnixMilli())
	for _, evs := range [][]*nudgev1.Event{c.j.carts(), c.j.purchases()} {
		if err := prod.publishAll(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(began)
	st := prod.stats()
	if st.Failed != 0 || c.led.unacked() != 0 {
		t.Fatalf("scheduling: publisher %+v, %d events unacknowledged", st, c.led.unacked())
	}
	if v := checkJourney(ctx, t, c.rdb, c.j); v.actions != 0 {
		t.Fatalf("%d reminders fired while the events were sent (in %v, the first timer due %v after they began): carts arrived after their due time, and the scenario needs them pending: %v",
			v.actions, took.Round(time.Millisecond), c.j.due(0).Sub(began).Round(time.Millisecond), v)
	}
	wantPending(ctx, t, c.rdb, c.layout, c.pending, "once the events are in")
	t.Logf("scheduled %d timers and cancelled %d (%d events in %v), due over the next %v",
		c.pending, c.j.buyers(), len(c.led.sent), took.Round(time.Millisecond), time.Until(c.j.latestDue()).Round(100*time.Millisecond))
	return n
}

// unacked counts the events sent and not acknowledged (APPLIED or
// DUPLICATE).
func (l *ledger) unacked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for id := range l.sent {
		switch l.acked[id] {
		case nudgev1.EventStatus_EVENT_STATUS_APPLIED, nudgev1.EventStatus_EVENT_STATUS_DUPLICATE:
		default:
			n++
		}
	}
	return n
}

// timeout bounds a wait for the timers: until the last is due, and 60 s
// more for a backlog and a fault's recovery.
func (c *journeyChaos) timeout() time.Duration {
	return time.Until(c.j.latestDue()) + 60*time.Second
}

// waitFired waits until at least share of the timers have fired, and
// returns how many are pending.
func (c *journeyChaos) waitFired(ctx context.Context, t *testing.T, share float64) int64 {
	t.Helper()
	waitTimers(ctx, t, c.rdb, c.layout, c.pending-int64(float64(c.pending)*share), false, c.timeout())
	p, _, err := dueCounts(ctx, c.rdb, c.layout)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// finish waits until every timer has fired and the due index is empty,
// and checks the outboxes.
func (c *journeyChaos) finish(ctx context.Context, t *testing.T) {
	t.Helper()
	waitTimers(ctx, t, c.rdb, c.layout, 0, true, c.timeout())
	wantJourneyExact(t, checkJourney(ctx, t, c.rdb, c.j))
}

// stop stops nudged with SIGTERM and waits for it to exit.
func stopNudged(t *testing.T, n *nudged) {
	t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.done:
		if err != nil {
			t.Fatalf("nudged exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nudged did not stop within 30s of SIGTERM")
	}
}

// wantRunning fails the test if nudged has exited.
func wantRunning(t *testing.T, n *nudged) {
	t.Helper()
	select {
	case err := <-n.done:
		t.Fatalf("nudged exited (%v); logs:\n%s", err, n.drainLogs())
	default:
	}
}

var firedRE = regexp.MustCompile(`(?m)^nudge_journey_steps_total\{[^}]*outcome="fired"[^}]*\} (\S+)$`)

// firedSteps is the journey steps a nudged fired, from its /metrics.
func firedSteps(t *testing.T, n *nudged) int64 {
	t.Helper()
	var sum int64
	for _, m := range firedRE.FindAllStringSubmatch(httpGet(t, n.metrics), -1) {
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		sum += int64(v)
	}
	return sum
}

// Journeys, scenario 1: nudged is killed (SIGKILL) with every timer
// pending, due a few seconds ahead; then the nudged started in its place
// is killed too, twice (5 times full) while the timers come due, each
// time once a further share of them has fired. Every timer fires exactly
// once: a firing is one transaction (the action's XADD and the timer's
// removal), so a process dying around it leaves either both or neither.
func TestChaosJourneyKillNudged(t *testing.T) {
	kills := chaosSize(2, 5)
	rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "everysec")
	c := newJourneyChaos(t, "jkill", rs.Client(t), "--redis-addr", rs.Addr)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	n := c.schedule(ctx, t)
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-n.done
	var atKills []int64
	for k := 1; k <= kills; k++ {
		n = c.start(t)
		c.waitFired(ctx, t, float64(k)/float64(kills+1))
		if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-n.done
		p, _, err := dueCounts(ctx, c.rdb, c.layout)
		if err != nil {
			t.Fatal(err)
		}
		atKills = append(atKills, p)
	}
	c.start(t)
	c.finish(ctx, t)
	t.Logf("nudged killed with %d timers pending, then %d times while they fired, with %v pending", c.pending, kills, atKills)
}

// Journeys, scenario 2: two nudged instances on one Redis poll the same
// due index every 10 ms and fire the same buckets. They race for the
// same users: the loser of a profile's WATCH finds nothing due. Every
// timer fires exactly once, and the instances' counts of fired steps
// (nudge_journey_steps_total{outcome="fired"}) add up to exactly the
// reminders: no firing is counted by both.
func TestChaosJourneyTwoInstances(t *testing.T) {
	rs := redistest.Start(t)
	c := newJourneyChaos(t, "jtwo", rs.Client(t), "--redis-addr", rs.Addr)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	stopNudged(t, c.schedule(ctx, t))
	a := c.start(t, "--timers-poll", "10ms", "--metrics-listen", "127.0.0.1:0")
	b := c.start(t, "--timers-poll", "10ms", "--metrics-listen", "127.0.0.1:0")
	c.finish(ctx, t)
	fa, fb := firedSteps(t, a), firedSteps(t, b)
	t.Logf("two instances fired %d and %d of %d timers", fa, fb, c.pending)
	if fa+fb != c.pending {
		t.Errorf("the instances count %d + %d = %d fired steps, want %d", fa, fb, fa+fb, c.pending)
	}
}

// Journeys, scenario 3: redis-server (appendonly yes, appendfsync always)
// is killed with SIGKILL once a third of the timers have fired, stays
// down 2 s (10 s full) while more come due, and restarts from its AOF.
// nudged keeps running: its timer loop retries, and fires the rest.
// With appendfsync always a firing whose EXEC was answered is on disk,
// and one that was not is either on disk whole or not at all (Redis
// drops a MULTI block the AOF holds only part of): every timer fires
// exactly once.
func TestChaosJourneyRedisAOFRestart(t *testing.T) {
	down := time.Duration(chaosSize(2, 10)) * time.Second
	rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	c := newJourneyChaos(t, "jaof", rs.Client(t), "--redis-addr", rs.Addr)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	stopNudged(t, c.schedule(ctx, t))
	n := c.start(t, "--metrics-listen", "127.0.0.1:0")
	atKill := c.waitFired(ctx, t, 1.0/3)
	rs.Stop()        // SIGKILL
	time.Sleep(down) // the fault's duration, not a wait for a result
	rs.Restart(t)
	c.finish(ctx, t)
	wantRunning(t, n)
	// The failed polls are a figure, not a criterion: a poll that was
	// firing when Redis died may retry its transactions until Redis is
	// back, and then fails none.
	errs := metricValue(t, httpGet(t, n.metrics), "nudge_timer_poll_errors_total")
	t.Logf("redis killed with %d of %d timers pending, down %v, restarted from its AOF; nudged's timer loop: %v failed polls", atKill, c.pending, down, errs)
}

// Journeys, scenario 4: a Redis Cluster of 3 masters with one replica
// each, nudged with WAIT (redis.wait_replicas auto, so 1). Once a third
// of the timers have fired, a master is killed with SIGKILL; its replica
// is promoted, and the killed node comes back as its replica.
//
// What exactly once means under failover: a timer is scheduled (and
// cancelled by a purchase) in its event's transaction, which nudged
// acknowledged only once a replica had it, so the promoted replica holds
// every acknowledged cart's timer and every acknowledged purchase's
// cancellation. A firing is one MULTI, replicated whole or not at all:
// when the master dies before its replica got a firing, the promoted
// replica still holds the timer, and it fires again there, under the same
// action id, while the first action is gone with the dead master's
// outbox (a consumer that read it already dedupes by the id). So the
// outboxes of the cluster that survives hold exactly one reminder per
// cart not bought, and none for a purchase. Without WAIT, an
// acknowledged cart or purchase can be lost in the failover, and with it
// a reminder, or a cancellation.
func TestChaosJourneyClusterFailover(t *testing.T) {
	down := time.Duration(chaosSize(500, 5000)) * time.Millisecond
	cl := redistest.StartClusterReplicas(t, 3, 1, "--appendonly", "yes", "--appendfsync", "everysec", "--cluster-node-timeout", "1000")
	c := newJourneyChaos(t, "jfail", cl.Client(t), "--redis-cluster", strings.Join(cl.Addrs(), ","))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	stopNudged(t, c.schedule(ctx, t))
	n := c.start(t, "--metrics-listen", "127.0.0.1:0")
	if m := waitChoiceRE.FindStringSubmatch(n.drainLogs()); m == nil || m[1] != "1" {
		t.Fatalf("nudged logged wait_replicas %v, want 1", m)
	}
	masters, err := cl.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victim := masters[0]
	heirs, err := cl.ReplicasOf(ctx, victim)
	if err != nil || len(heirs) != 1 {
		t.Fatalf("replicas of the victim: %v, %v; want one", heirs, err)
	}
	atKill := c.waitFired(ctx, t, 1.0/3)
	if _, err := cl.KillMaster(ctx, victim); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := cl.WaitFailover(ctx); err != nil {
		t.Fatal(err)
	}
	failover := time.Since(killed)
	time.Sleep(down) // the pace of the fault: the promoted master runs without a replica
	cl.RestartNode(t, victim)
	if err := cl.WaitStable(ctx); err != nil {
		t.Fatalf("the killed node did not rejoin: %v", err)
	}
	c.finish(ctx, t)
	wantRunning(t, n)
	scrape := httpGet(t, n.metrics)
	t.Logf("master %s killed with %d of %d timers pending, replica promoted after %v; nudged: %v failed polls, %v replication waits failed, %v redirects, %v error retries",
		cl.Nodes[victim].Addr, atKill, c.pending, failover.Round(time.Millisecond),
		metricValue(t, scrape, "nudge_timer_poll_errors_total"), metricValue(t, scrape, "nudge_store_replication_waits_failed_total"),
		metricValue(t, scrape, "nudge_store_redirects_total"), metricValue(t, scrape, "nudge_store_error_retries_total"))
}
