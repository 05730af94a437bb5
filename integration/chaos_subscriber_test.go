package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/internal/redistest"
)

// deliveryLog is what the subscriber processes of one group reported.
type deliveryLog struct {
	mu        sync.Mutex
	delivered map[string]int // action id -> deliveries
	total     int
}

func (l *deliveryLog) add(id string) {
	l.mu.Lock()
	l.delivered[id]++
	l.total++
	l.mu.Unlock()
}

// counts returns the deliveries and the distinct actions delivered.
func (l *deliveryLog) counts() (total, distinct int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, len(l.delivered)
}

// missing counts the ids never delivered. The last member may still be
// reporting redeliveries meanwhile.
func (l *deliveryLog) missing(ids []string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, id := range ids {
		if l.delivered[id] == 0 {
			n++
		}
	}
	return n
}

// subscriberProc is a subscriber process: the test binary run as
// runSubscriber (see TestMain).
type subscriberProc struct {
	cmd       *exec.Cmd
	done      chan struct{} // closed once its output is read and it exited
	mu        sync.Mutex
	delivered int
	stderr    bytes.Buffer
}

func startSubscriber(t *testing.T, addr, group, consumer string, log *deliveryLog) *subscriberProc {
	t.Helper()
	p := &subscriberProc{done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s", subscriberEnv, addr, group, consumer))
	p.cmd.Stderr = &p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 || f[0] != "delivered" {
				continue
			}
			log.add(f[1])
			p.mu.Lock()
			p.delivered++
			p.mu.Unlock()
		}
		_ = p.cmd.Wait()
	}()
	return p
}

func (p *subscriberProc) deliveredCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delivered
}

// groupBacklog sums, over every outbox stream, the group's pending
// (delivered, not acknowledged) and lag (not yet delivered) entries.
func groupBacklog(ctx context.Context, t *testing.T, rdb redis.UniversalClient, group string) (pending, lag int64) {
	t.Helper()
	var streams []string
	scanKeys(ctx, t, rdb, "nudge:*:out", func(key string) { streams = append(streams, key) })
	for _, key := range streams {
		groups, err := rdb.XInfoGroups(ctx, key).Result()
		if err != nil {
			t.Fatalf("XINFO GROUPS %s: %v", key, err)
		}
		found := false
		for _, g := range groups {
			if g.Name == group {
				pending, lag, found = pending+g.Pending, lag+g.Lag, true
			}
		}
		if !found {
			lag++ // the group has not read this stream yet
		}
	}
	return pending, lag
}

// Scenario 8: subscriber processes are killed with SIGKILL mid-delivery,
// 10 times, while events stream in and trigger actions. Every action in
// the outbox is delivered to the group at least once and acknowledged;
// redeliveries are counted. nudged's visibility timeout is set far beyond
// the test's deadline, so what a killed member held comes back only
// because nudged releases it when the member's stream ends.
func TestChaosSubscriberKilled(t *testing.T) {
	events, users := chaosSize(20_000, 100_000), chaosSize(1_000, 5_000)
	const kills, group = 10, "sms-sender"
	step := chaosSize(150, 800) // actions a member delivers before it is killed
	rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "everysec")
	n := startNudged(t, buildNudged(t), "--redis-addr", rs.Addr, "--visibility-timeout", "1h", "--metrics-listen", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	rdb := rs.Client(t)
	led := newLedger()
	prod := newChaosProducer(t, []string{n.addr}, 4, 500, led)
	log := &deliveryLog{delivered: map[string]int{}}

	done := prod.start(ctx, t, "m", events, users)
	for k := 1; k <= kills; k++ {
		sub := startSubscriber(t, n.addr, group, fmt.Sprintf("member-%d", k), log)
		for sub.deliveredCount() < step {
			select {
			case <-sub.done:
				t.Fatalf("subscriber %d exited after %d deliveries: %s", k, sub.deliveredCount(), sub.stderr.String())
			case <-ctx.Done():
				t.Fatalf("subscriber %d delivered %d of %d actions before the deadline", k, sub.deliveredCount(), step)
			case <-time.After(2 * time.Millisecond): // polling the member's progress
			}
		}
		if err := sub.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-sub.done
	}
	lastKill := time.Now()
	last := startSubscriber(t, n.addr, group, "member-last", log)
	<-done
	// Every action is delivered and acknowledged once the group has
	// nothing pending and nothing undelivered.
	for {
		pending, lag := groupBacklog(ctx, t, rdb, group)
		if pending == 0 && lag == 0 {
			break
		}
		select {
		case <-last.done:
			t.Fatalf("the last subscriber exited: %s", last.stderr.String())
		case <-ctx.Done():
			total, distinct := log.counts()
			t.Fatalf("after the deadline the group still has %d actions pending and %d undelivered (%d deliveries of %d actions)", pending, lag, total, distinct)
		case <-time.After(20 * time.Millisecond): // polling the group's backlog
		}
	}
	settled := time.Since(lastKill)

	ids := outboxActionIDs(ctx, t, rdb)
	missing := log.missing(ids)
	total, distinct := log.counts()
	dead, err := rdb.XLen(ctx, "nudge:dead").Result()
	if err != nil {
		t.Fatal(err)
	}
	released := metricValue(t, httpGet(t, n.metrics), "nudge_actions_released_total")
	t.Logf("%d events over %d users; %d subscriber processes killed with SIGKILL, each after %d deliveries: %d actions in the outbox, %d delivered (%d deliveries, %d redeliveries), actions_missing %d, dead-lettered %d; nudged released %v unacknowledged deliveries; the group settled %v after the last kill",
		events, users, kills, step, len(ids), distinct, total, total-distinct, missing, dead, released, settled.Round(time.Millisecond))
	if missing != 0 || dead != 0 {
		t.Errorf("actions_missing %d, dead-lettered %d: want 0", missing, dead)
	}
	if released == 0 {
		t.Error("nudged released nothing: no member was killed holding unacknowledged actions")
	}
	wantExact(t, led.check(ctx, t, rdb))
}
