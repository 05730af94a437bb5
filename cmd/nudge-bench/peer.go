package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// peerMaxAttempts bounds the WATCH attempts of one peer-watch event, as
// the peers' gotxn does.
const peerMaxAttempts = 100

// peerKeyPrefix names the peer-watch blobs; nothing of nudge's starts so.
const peerKeyPrefix = "nudge-bench:peer:"

// peerBlob is the small JSON profile of the peer-watch workload: the 20
// fields of the peers' blob (16 category counters, two times, a time zone,
// a consent) plus Count, the events applied to it, which the check sums.
type peerBlob struct {
	Count   int64             `json:"count"`
	Views   [categories]int64 `json:"v"`
	FirstTS int64             `json:"first_ts"`
	LastTS  int64             `json:"last_ts"`
	TZ      string            `json:"tz"`
	Consent string            `json:"consent"`
}

// txnJSON is the peer-watch workload's own result.
type txnJSON struct {
	Committed uint64 `json:"committed"` // events whose transaction committed
	Retries   uint64 `json:"retries"`   // WATCH aborts retried (redis.TxFailedErr)
	Failed    uint64 `json:"failed"`    // events given up: 100 aborts or an error
	FirstErr  string `json:"first_error,omitempty"`
	// CountBefore and CountAfter are the sums of the blobs' counts.
	CountBefore int64 `json:"count_before"`
	CountAfter  int64 `json:"count_after"`
}

// runPeerWatch is the per-event optimistic transaction of the seed
// pattern, in Go against Redis directly, with no nudged: the floor nudge's
// ingest is compared with. For each event, Client.Watch on the user's key,
// GET, then TxPipelined SET of the blob with the count incremented (3
// round trips: WATCH; GET; MULTI SET EXEC), retried on redis.TxFailedErr.
// --concurrency workers, closed loop, until --events or --duration.
func runPeerWatch(ctx context.Context, cfg config, rdb *redis.Client, st *stats) (workloadJSON, txnJSON, error) {
	var tj txnJSON
	before, err := sumPeerCounts(ctx, cfg, rdb)
	if err != nil {
		return workloadJSON{}, tj, err
	}
	tj.CountBefore = before
	// Open the pool's connections before timing, as gotxn does.
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() { _ = rdb.Ping(ctx).Err() })
	}
	wg.Wait()

	var next, retries, failed atomic.Int64
	var firstErr atomic.Pointer[string]
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	for w := range cfg.Concurrency {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			pick := cfg.newPicker(rng)
			for next.Add(1) <= int64(cfg.Events) && ctx.Err() == nil && time.Now().Before(deadline) {
				u, cat := pick(), rng.IntN(categories)
				t := time.Now()
				attempts, err := peerEvent(ctx, rdb, cfg.userID(u), cat)
				if ctx.Err() != nil {
					return
				}
				retries.Add(int64(attempts - 1))
				if err != nil {
					failed.Add(1)
					msg := err.Error()
					firstErr.CompareAndSwap(nil, &msg)
					continue
				}
				d := time.Since(t)
				st.lat.Record(d)
				st.svc.Record(d)
				st.ops.Add(1)
				st.events.Add(1)
				st.applied.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	res := st.summary(elapsed)
	tj.Committed, tj.Retries, tj.Failed = res.Applied, uint64(retries.Load()), uint64(failed.Load())
	if p := firstErr.Load(); p != nil {
		tj.FirstErr = *p
	}
	if ctx.Err() != nil {
		return res, tj, nil
	}
	after, err := sumPeerCounts(ctx, cfg, rdb)
	if err != nil {
		return res, tj, err
	}
	tj.CountAfter = after
	return res, tj, nil
}

// peerEvent applies one event to the user's blob; it returns the attempts
// made.
func peerEvent(ctx context.Context, rdb *redis.Client, user string, cat int) (int, error) {
	key := peerKeyPrefix + user
	for attempt := 1; attempt <= peerMaxAttempts; attempt++ {
		err := rdb.Watch(ctx, func(tx *redis.Tx) error {
			var b peerBlob
			raw, err := tx.Get(ctx, key).Bytes()
			switch {
			case errors.Is(err, redis.Nil):
				b = peerBlob{FirstTS: time.Now().UnixMilli(), TZ: "Europe/Paris", Consent: "sms,push"}
			case err != nil:
				return err
			default:
				if err := json.Unmarshal(raw, &b); err != nil {
					return fmt.Errorf("decode %s: %w", key, err)
				}
			}
			b.Count++
			b.Views[cat]++
			b.LastTS = time.Now().UnixMilli()
			enc, err := json.Marshal(&b)
			if err != nil {
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, key, enc, 0)
				return nil
			})
			return err
		}, key)
		if errors.Is(err, redis.TxFailedErr) {
			continue
		}
		if err != nil {
			return attempt, fmt.Errorf("peer-watch %s: %w", key, err)
		}
		return attempt, nil
	}
	return peerMaxAttempts, fmt.Errorf("peer-watch %s: %d attempts aborted: %w", key, peerMaxAttempts, redis.TxFailedErr)
}

// sumPeerCounts is the sum of the users' blob counts.
func sumPeerCounts(ctx context.Context, cfg config, rdb *redis.Client) (int64, error) {
	var sum int64
	keys := make([]string, 0, viewChunk)
	for lo := 0; lo < cfg.Users; lo += viewChunk {
		keys = keys[:0]
		for u := lo; u < min(lo+viewChunk, cfg.Users); u++ {
			keys = append(keys, peerKeyPrefix+cfg.userID(u))
		}
		vals, err := rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return 0, fmt.Errorf("read peer blobs: %w", err)
		}
		for i, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue
			}
			var b peerBlob
			if err := json.Unmarshal([]byte(s), &b); err != nil {
				return 0, fmt.Errorf("decode %s: %w", keys[i], err)
			}
			sum += b.Count
		}
	}
	return sum, nil
}

// peerCheck is peer-watch's check: the counts grew by exactly the
// committed events.
func peerCheck(tj txnJSON) check {
	grew := tj.CountAfter - tj.CountBefore
	return check{Name: "peer-watch counts", OK: grew == int64(tj.Committed),
		Detail: "counts grew by " + strconv.FormatInt(grew, 10) + ", committed " + strconv.FormatUint(tj.Committed, 10)}
}
