package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// groupLog records what one consumer group received and acknowledged.
type groupLog struct {
	mu        sync.Mutex
	delivered map[string]int  // action id -> deliveries
	acked     map[string]bool // action id -> acknowledged
	unacked   map[string]bool // delivered to the killed member, never acked by it
}

func newGroupLog() *groupLog {
	return &groupLog{delivered: map[string]int{}, acked: map[string]bool{}, unacked: map[string]bool{}}
}

func (g *groupLog) counts() (acked int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.acked)
}

// subscribe runs one member of a group until ctx ends or, for a member
// that is killed, until it has taken killAfter actions (it acks none).
// Members never ack poisoned actions.
func subscribe(ctx context.Context, t *testing.T, e *env, group, member string, log *groupLog, killAfter int, poisoned func(string) bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // the "kill": the stream goes away, nothing acknowledged
	stream, err := e.acts.Subscribe(ctx, &nudgev1.SubscribeRequest{Group: group, Consumer: member})
	if err != nil {
		if ctx.Err() == nil {
			t.Error(err)
		}
		return
	}
	taken := 0
	for {
		resp, err := stream.Recv()
		if err != nil {
			return // ctx ended (test over, or killed)
		}
		id := resp.GetAction().GetActionId()
		log.mu.Lock()
		log.delivered[id]++
		if killAfter > 0 {
			log.unacked[id] = true
		}
		log.mu.Unlock()
		if killAfter > 0 {
			if taken++; taken >= killAfter {
				return
			}
			continue
		}
		if poisoned(resp.GetAction().GetUserId()) {
			continue
		}
		if _, err := e.acts.Ack(ctx, &nudgev1.AckRequest{Group: group, Consumer: member, AckIds: []string{resp.GetAckId()}}); err != nil {
			if ctx.Err() == nil {
				t.Error(err)
			}
			return
		}
		log.mu.Lock()
		log.acked[id] = true
		log.mu.Unlock()
	}
}

// 10,000 triggered actions, two groups of two subscribers: one subscriber
// is killed mid-way without acking; every action is delivered and acked in
// each group, duplicates come only from the killed member's unacked
// actions, and poisoned actions reach the dead-letter stream after the
// maximum deliveries (3 here).
func TestActionsDeliveredAtLeastOnceToEveryGroup(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{Buckets: 16})
		const actions, poison = 10000, 5
		// big-purchase-thanks fires once per user for a purchase of 200 or more.
		for start := 0; start < actions; start += 1000 {
			var batch []*nudgev1.Event
			for u := start; u < start+1000; u++ {
				user := fmt.Sprintf("buyer-%d", u)
				if u < poison {
					user = fmt.Sprintf("poison-%d", u)
				}
				ev := ev(user, "purchase", "tv", time.Minute)
				ev.Value = 300
				batch = append(batch, ev)
			}
			resp := e.publish(t, batch...)
			if len(resp.Actions) != 1000 {
				t.Fatalf("batch at %d triggered %d actions, want 1000", start, len(resp.Actions))
			}
		}
		isPoison := func(user string) bool { return strings.HasPrefix(user, "poison-") }

		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		logs := map[string]*groupLog{"email-sender": newGroupLog(), "warehouse": newGroupLog()}
		var wg sync.WaitGroup
		for group, log := range logs {
			wg.Go(func() { subscribe(ctx, t, e, group, "steady", log, 0, isPoison) })
			if group == "email-sender" {
				// This member dies after taking 100 actions (below the unacked
				// window, so it gets them at once), acking none; a replacement
				// joins under another name.
				wg.Go(func() {
					subscribe(ctx, t, e, group, "doomed", log, 100, isPoison)
					subscribe(ctx, t, e, group, "replacement", log, 0, isPoison)
				})
			} else {
				wg.Go(func() { subscribe(ctx, t, e, group, "second", log, 0, isPoison) })
			}
		}
		// Wait until each group acknowledged everything but the poison, and the
		// poison of each group is dead-lettered.
		for ctx.Err() == nil {
			done := true
			for _, log := range logs {
				if log.counts() < actions-poison {
					done = false
				}
			}
			dead, err := e.rdb.XLen(ctx, "nudge:dead").Result()
			if err != nil {
				t.Fatal(err)
			}
			if done && dead >= 2*poison {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		if ctx.Err() != nil {
			for g, log := range logs {
				t.Errorf("group %s acked %d of %d", g, log.counts(), actions-poison)
			}
			t.Fatal("delivery did not complete within 90 s")
		}
		cancel()
		wg.Wait()

		for g, log := range logs {
			// 0 lost: every action but the poisoned ones acknowledged.
			if len(log.acked) != actions-poison {
				t.Errorf("group %s: %d actions acked, want %d", g, len(log.acked), actions-poison)
			}
			// Duplicates only where a member dropped the action: the killed
			// member's unacked ones, and the poisoned ones nobody acks.
			dups := 0
			for id, n := range log.delivered {
				if n == 1 {
					continue
				}
				dups++
				if !log.unacked[id] && log.acked[id] {
					t.Errorf("group %s: action %s delivered %d times though no member dropped it", g, id, n)
				}
			}
			t.Logf("group %s: %d delivered, %d acked, %d redelivered", g, len(log.delivered), len(log.acked), dups)
		}
		dead, err := e.rdb.XRange(t.Context(), "nudge:dead", "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		perGroup := map[string]int{}
		for _, m := range dead {
			if !isPoison(m.Values["user_id"].(string)) || m.Values["delivery_count"] != "3" {
				t.Errorf("dead letter %v is not a poisoned action after 3 deliveries", m.Values)
			}
			perGroup[m.Values["dead_group"].(string)]++
		}
		if perGroup["email-sender"] != poison || perGroup["warehouse"] != poison {
			t.Errorf("dead letters per group = %v, want %d each", perGroup, poison)
		}
	})
}
