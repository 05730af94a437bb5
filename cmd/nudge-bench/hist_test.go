package main

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBucketsCoverEveryValue(t *testing.T) {
	// Every bucket's range starts where the previous one ended, and a value
	// maps to the bucket whose range holds it.
	var next uint64
	for i := range numBuckets {
		lo, hi := bucketRange(i)
		if lo != next || hi < lo {
			t.Fatalf("bucket %d = [%d, %d], want it to start at %d", i, lo, hi, next)
		}
		for _, v := range []uint64{lo, hi, lo + (hi-lo)/2} {
			if b := bucketOf(v); b != i {
				t.Fatalf("bucketOf(%d) = %d, want %d", v, b, i)
			}
		}
		next = hi + 1
	}
	if next != 0 { // wrapped: the last bucket ends at MaxUint64
		t.Fatalf("the buckets end at %d, not at the largest uint64", next-1)
	}
}

func TestQuantilesOnKnownData(t *testing.T) {
	tests := []struct {
		name   string
		values func() []time.Duration
	}{
		{"1..10000 µs", func() []time.Duration {
			var v []time.Duration
			for i := 1; i <= 10000; i++ {
				v = append(v, time.Duration(i)*time.Microsecond)
			}
			return v
		}},
		{"small exact values", func() []time.Duration {
			var v []time.Duration
			for i := range 100 {
				v = append(v, time.Duration(i))
			}
			return v
		}},
		{"bimodal with a stall", func() []time.Duration {
			v := slices.Repeat([]time.Duration{200 * time.Microsecond}, 990)
			return append(v, slices.Repeat([]time.Duration{2 * time.Second}, 10)...)
		}},
		{"lognormal-ish", func() []time.Duration {
			r := rand.New(rand.NewPCG(1, 2))
			var v []time.Duration
			for range 50000 {
				v = append(v, time.Duration(r.ExpFloat64()*float64(time.Millisecond))+50*time.Microsecond)
			}
			return v
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values := tt.values()
			var h Histogram
			for _, v := range values {
				h.Record(v)
			}
			sorted := slices.Sorted(slices.Values(values))
			for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
				rank := int(float64(len(sorted))*q+0.999999) - 1
				want := sorted[max(rank, 0)]
				got := h.Quantile(q)
				if diff := float64(got-want) / float64(max(want, 1)); diff > 1.0/(2*subBuckets) || diff < -1.0/(2*subBuckets) {
					t.Errorf("q%v = %v, want %v within 0.8%%", q, got, want)
				}
			}
			if h.Max() != sorted[len(sorted)-1] || h.Count() != uint64(len(values)) {
				t.Errorf("max %v count %d, want %v %d", h.Max(), h.Count(), sorted[len(sorted)-1], len(values))
			}
		})
	}
}

func TestEmptyHistogram(t *testing.T) {
	var h Histogram
	if h.Quantile(0.99) != 0 || h.Mean() != 0 || h.Max() != 0 {
		t.Errorf("empty: q99 %v mean %v max %v", h.Quantile(0.99), h.Mean(), h.Max())
	}
}

func TestMergeAndConcurrentRecord(t *testing.T) {
	r := NewRecorder()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				r.Record(time.Duration(w*1000+i) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	win := r.SwapWindow()
	if win.Count() != 4000 || r.Total.Count() != 4000 || r.SwapWindow().Count() != 0 {
		t.Fatalf("counts: window %d total %d", win.Count(), r.Total.Count())
	}
	var m Histogram
	m.Merge(&r.Total)
	m.Merge(win)
	if m.Count() != 8000 || m.Max() != 3999*time.Microsecond {
		t.Errorf("merged count %d max %v", m.Count(), m.Max())
	}
	if q := m.Quantile(0.5); q < 1980*time.Microsecond || q > 2020*time.Microsecond {
		t.Errorf("merged p50 %v, want about 2ms", q)
	}
}
