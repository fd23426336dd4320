package limiter

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// The benchmarks compare Allow with x/time/rate's Allow in the same run, on
// the two paths a client sees: every call admitted (a rule so loose it never
// binds), and every call refused (100 per minute hammered far past it).
// Run them with: go test -run '^$' -bench . -benchmem

func mustNew(b *testing.B, limit int, window time.Duration) *Limiter {
	l, err := New(limit, window)
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// looseLimiter admits every call: a million per millisecond is far more
// than one goroutine, or two cores, can ask for.
func looseLimiter(b *testing.B) *Limiter { return mustNew(b, 1_000_000, time.Millisecond) }

func looseRate() *rate.Limiter { return rate.NewLimiter(1e12, 1_000_000) }

// fullLimiter and fullRate refuse every call: 100 per minute, all spent.
func fullLimiter(b *testing.B) *Limiter {
	l := mustNew(b, DefaultLimit, DefaultWindow)
	for range DefaultLimit {
		l.Allow()
	}
	return l
}

// fullRate refills one token each 600 ms, so a long run sees a few admitted
// calls among millions: its result is not checked.
func fullRate() func() bool {
	r := rate.NewLimiter(rate.Every(DefaultWindow/DefaultLimit), DefaultLimit)
	for range DefaultLimit {
		r.Allow()
	}
	return func() bool { r.Allow(); return false }
}

func benchAllow(b *testing.B, allow func() bool, want bool) {
	b.ReportAllocs()
	for b.Loop() {
		if allow() != want {
			b.Fatalf("Allow = %v, want %v", !want, want)
		}
	}
}

func benchAllowParallel(b *testing.B, allow func() bool, want bool) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if allow() != want {
				b.Errorf("Allow = %v, want %v", !want, want)
				return
			}
		}
	})
}

func BenchmarkAllow(b *testing.B) {
	b.Run("admit/limiter", func(b *testing.B) { benchAllow(b, looseLimiter(b).Allow, true) })
	b.Run("admit/x-time-rate", func(b *testing.B) { benchAllow(b, looseRate().Allow, true) })
	b.Run("refuse/limiter", func(b *testing.B) { benchAllow(b, fullLimiter(b).Allow, false) })
	b.Run("refuse/x-time-rate", func(b *testing.B) { benchAllow(b, fullRate(), false) })
}

func BenchmarkAllowParallel(b *testing.B) {
	b.Run("admit/limiter", func(b *testing.B) { benchAllowParallel(b, looseLimiter(b).Allow, true) })
	b.Run("admit/x-time-rate", func(b *testing.B) { benchAllowParallel(b, looseRate().Allow, true) })
	b.Run("refuse/limiter", func(b *testing.B) { benchAllowParallel(b, fullLimiter(b).Allow, false) })
	b.Run("refuse/x-time-rate", func(b *testing.B) { benchAllowParallel(b, fullRate(), false) })
}

// BenchmarkAllowLimitSize shows that a call costs the same whatever the
// limit: the log is a ring, and admission looks only at its ends.
func BenchmarkAllowLimitSize(b *testing.B) {
	for _, n := range []int{100, 100_000} {
		name := "limit=" + map[int]string{100: "100", 100_000: "100000"}[n]
		b.Run(name+"/admit", func(b *testing.B) {
			// Calls take tens of nanoseconds: n per 10n ns never fills,
			// and the ring holds a few hundred calls in both cases.
			l := mustNew(b, n, time.Duration(n)*10*time.Nanosecond)
			benchAllow(b, l.Allow, true)
		})
		b.Run(name+"/refuse", func(b *testing.B) {
			l := mustNew(b, n, time.Hour)
			for range n {
				l.Allow()
			}
			benchAllow(b, l.Allow, false)
		})
	}
}

// BenchmarkWaitWakeLatency measures, on SystemClock, how late a blocked
// waiter is admitted after its slot frees, and reports the 99th percentile
// as p99-late-µs. Each iteration waits a whole 1 ms window.
func BenchmarkWaitWakeLatency(b *testing.B) {
	const w = time.Millisecond
	l := mustNew(b, 1, w)
	ctx := context.Background()
	var late []time.Duration
	for b.Loop() {
		start := time.Now() // no later than the admission below
		if !l.Allow() {
			b.Fatal("slot not free")
		}
		if err := l.Wait(ctx); err != nil {
			b.Fatal(err)
		}
		late = append(late, time.Since(start)-w)
		time.Sleep(w) // the window empties for the next iteration
	}
	slices.Sort(late)
	p99 := late[len(late)*99/100]
	b.ReportMetric(float64(p99)/float64(time.Microsecond), "p99-late-µs")
	b.ReportMetric(float64(late[len(late)/2])/float64(time.Microsecond), "p50-late-µs")
}

// BenchmarkAllowN compares weighted calls with Allow on limiters alike,
// interleaved as BenchmarkVersusRate does: the weight itself costs
// nothing, and a call of weight 5 logs five instants. The rule never binds
// and its window is short (a million per 10 µs), so that the log, five
// times longer for weight 5, stays in the cache on both sides.
func BenchmarkAllowN(b *testing.B) {
	short := func() *Limiter { return mustNew(b, 1_000_000, 10*time.Microsecond) }
	for _, n := range []int{1, 5} {
		b.Run("AllowN("+strconv.Itoa(n)+")", func(b *testing.B) {
			l := short()
			benchVersus(b, 1, func() bool { return l.AllowN(n) }, "Allow", short().Allow)
		})
	}
	b.Run("bucket/Allow", func(b *testing.B) {
		l := short()
		l.rules.buckets = []bucket{{burst: 1_000_000, every: time.Nanosecond}}
		benchVersus(b, 1, l.Allow, "Allow", short().Allow)
	})
}

// BenchmarkWaitersLateness starts 1,000 goroutines waiting on a limiter of
// 1,000 per second that is full, and reports how late, after the instant
// its slot frees, the 99th percentile of them returns from Wait; the
// baseline is 1,000 plain timers set for the same instants. Each iteration
// takes a second: run it with -benchtime=3x.
func BenchmarkWaitersLateness(b *testing.B) {
	const n = 1000
	b.Run("limiter", func(b *testing.B) {
		benchLateness(b, n, func(due []time.Time) func(i int) {
			l := mustNew(b, n, time.Second)
			for i := range n {
				l.Allow()
				due[i] = time.Now().Add(time.Second)
			}
			return func(int) {
				if err := l.Wait(context.Background()); err != nil {
					b.Error(err)
				}
			}
		})
	})
	b.Run("timers", func(b *testing.B) {
		benchLateness(b, n, func(due []time.Time) func(i int) {
			for i := range n {
				due[i] = time.Now().Add(time.Second)
			}
			return func(i int) { <-time.NewTimer(time.Until(due[i])).C }
		})
	})
}

// benchLateness runs n goroutines that each call the wait that setup
// returns, after setup has filled in the instants they are due, and reports
// the worst p99 lateness over the iterations. Goroutines return in order of
// their instants, so the i-th return is matched with the i-th instant.
func benchLateness(b *testing.B, n int, setup func(due []time.Time) func(i int)) {
	var p99 time.Duration
	for b.Loop() {
		due := make([]time.Time, n)
		wait := setup(due)
		back := make(chan time.Time, n)
		for i := range n {
			go func() {
				wait(i)
				back <- time.Now()
			}()
		}
		got := make([]time.Time, 0, n)
		for range n {
			got = append(got, <-back)
		}
		slices.SortFunc(got, func(a, b time.Time) int { return a.Compare(b) })
		p99 = max(p99, lateness(due, got))
	}
	b.ReportMetric(float64(p99)/float64(time.Microsecond), "p99-late-µs")
}

// lateness returns the 99th percentile of got[i] - due[i].
func lateness(due, got []time.Time) time.Duration {
	late := make([]time.Duration, len(due))
	for i := range due {
		late[i] = got[i].Sub(due[i])
	}
	slices.Sort(late)
	return late[len(late)*99/100]
}

// BenchmarkVersusRate alternates batches of calls to this package's Allow
// and to x/time/rate's, on one goroutine and then on every core, and
// reports each side's ns per call and their ratio. Interleaving at a fine
// grain makes the ratio robust to other load on the machine, which slows
// both sides alike; it is the figure the README quotes.
func BenchmarkVersusRate(b *testing.B) {
	b.Run("admit", func(b *testing.B) { benchVersus(b, 1, looseLimiter(b).Allow, "rate", looseRate().Allow) })
	b.Run("refuse", func(b *testing.B) { benchVersus(b, 1, fullLimiter(b).Allow, "rate", fullRate()) })
	p := runtime.GOMAXPROCS(0)
	b.Run("admit-parallel", func(b *testing.B) { benchVersus(b, p, looseLimiter(b).Allow, "rate", looseRate().Allow) })
	b.Run("refuse-parallel", func(b *testing.B) { benchVersus(b, p, fullLimiter(b).Allow, "rate", fullRate()) })
}

// versusBatch is the number of calls each goroutine makes in one timed
// batch: long enough that starting and waking the goroutines of a parallel
// batch costs both sides little, short enough that both see the same
// background load.
const versusBatch = 20000

// benchVersus runs, in each iteration, one batch of ours and one of
// theirs, named name, on g goroutines at once, and reports the median ns
// per call of each and the ratio of the medians, which a batch preempted
// by other load barely moves.
func benchVersus(b *testing.B, g int, ours func() bool, name string, theirs func() bool) {
	var tOurs, tTheirs []time.Duration
	for b.Loop() {
		tOurs = append(tOurs, batch(g, ours))
		tTheirs = append(tTheirs, batch(g, theirs))
	}
	mOurs, mTheirs := median(tOurs), median(tTheirs)
	perCall := float64(g * versusBatch)
	b.ReportMetric(float64(mOurs)/perCall, "ours-ns/call")
	b.ReportMetric(float64(mTheirs)/perCall, name+"-ns/call")
	b.ReportMetric(float64(mOurs)/float64(mTheirs), "ratio")
}

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// batch runs versusBatch calls of f on each of g goroutines and returns
// the time they took together; on one goroutine, the caller's.
func batch(g int, f func() bool) time.Duration {
	start := time.Now()
	if g == 1 {
		for range versusBatch {
			f()
		}
		return time.Since(start)
	}
	var wg sync.WaitGroup
	for range g {
		wg.Go(func() {
			for range versusBatch {
				f()
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}
