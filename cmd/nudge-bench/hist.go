package main

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram counts latencies in log-spaced buckets, as HdrHistogram does:
// values below 2·subBuckets nanoseconds are exact, larger ones fall in one
// of subBuckets linear buckets per power of two, so a quantile is off by at
// most 1/(2·subBuckets) of its value (0.8 %). Record is lock-free and safe
// for concurrent use with itself and with the readers.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64 // nanoseconds; overflows only after 584 years
	max    atomic.Uint64
}

const (
	subBits    = 6
	subBuckets = 1 << subBits // linear buckets per power of two
	// Values below exact are their own bucket.
	exact = 2 * subBuckets
	// Shifts run from 1 to 64-subBits-1 for a uint64.
	numBuckets = exact + (64-subBits-1)*subBuckets
)

// bucketOf is the index of the bucket holding v.
func bucketOf(v uint64) int {
	if v < exact {
		return int(v)
	}
	shift := bits.Len64(v) - subBits - 1 // v>>shift is in [subBuckets, 2·subBuckets)
	top := v >> shift
	return exact + (shift-1)*subBuckets + int(top-subBuckets)
}

// bucketRange is the smallest and largest value of bucket i.
func bucketRange(i int) (lo, hi uint64) {
	if i < exact {
		return uint64(i), uint64(i)
	}
	shift := (i-exact)/subBuckets + 1
	top := uint64((i-exact)%subBuckets + subBuckets)
	return top << shift, (top+1)<<shift - 1
}

// Record adds one latency; negative ones count as 0.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)].Add(1)
	h.n.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// Count is the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Max is the largest value recorded (exact).
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Mean is the mean of the values recorded (exact); 0 when empty.
func (h *Histogram) Mean() time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Quantile is the value below which a fraction q of the values fall: the
// middle of the bucket holding the value of rank ceil(q·n), capped at Max.
// 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	var total uint64
	for i := range h.counts {
		total += h.counts[i].Load()
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	rank = min(max(rank, 1), total)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			lo, hi := bucketRange(i)
			return min(time.Duration(lo+(hi-lo)/2), h.Max())
		}
	}
	return h.Max()
}

// Merge adds o's values to h. o must not change meanwhile.
func (h *Histogram) Merge(o *Histogram) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c > 0 {
			h.counts[i].Add(c)
		}
	}
	h.n.Add(o.n.Load())
	h.sum.Add(o.sum.Load())
	for v := o.max.Load(); ; {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// Recorder records into a total histogram and a window histogram that the
// progress reporter swaps every interval, for the current p99.
type Recorder struct {
	Total  Histogram
	window atomic.Pointer[Histogram]
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	r := &Recorder{}
	r.window.Store(new(Histogram))
	return r
}

// Record adds one latency to the total and the current window.
func (r *Recorder) Record(d time.Duration) {
	r.Total.Record(d)
	r.window.Load().Record(d)
}

// SwapWindow starts a new window and returns the last one. A Record racing
// with the swap may land in either.
func (r *Recorder) SwapWindow() *Histogram { return r.window.Swap(new(Histogram)) }
