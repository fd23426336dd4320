package limiter

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type rule struct {
	limit  int
	window time.Duration
}

// randomRules returns one to three rules, each tighter than the ones before
// it can imply, so New accepts them.
func randomRules(rng *rand.Rand) []rule {
	rules := []rule{{1 + rng.IntN(12), time.Duration(1+rng.IntN(50)) * time.Millisecond}}
	for range rng.IntN(3) {
		prev := rules[len(rules)-1]
		w := prev.window * time.Duration(2+rng.IntN(5))
		bound := -1 // the most calls in w that the rules so far allow
		for _, r := range rules {
			k := int((w-1)/r.window) + 1
			if bound < 0 || r.limit*k < bound {
				bound = r.limit * k
			}
		}
		if bound-1 > prev.limit {
			rules = append(rules, rule{prev.limit + 1 + rng.IntN(bound-1-prev.limit), w})
		}
	}
	return rules
}

func newRules(t *testing.T, rules []rule, opts ...Option) *Limiter {
	t.Helper()
	for _, r := range rules[1:] {
		opts = append(opts, WithWindow(r.limit, r.window))
	}
	l, err := New(rules[0].limit, rules[0].window, opts...)
	require.NoError(t, err, "rules %v", rules)
	return l
}

// occupancy is the interval during which a call holds a slot: from the
// moment it is admitted until a window after it finished (or until it was
// cancelled).
type occupancy struct{ from, to time.Duration }

// checkOccupancy fails unless, at every instant, at most limit calls hold a
// slot of each rule: the server-side view, counting arrivals.
func checkOccupancy(t *testing.T, rules []rule, calls []occupancy, extra func(r rule, c occupancy) time.Duration) {
	t.Helper()
	for _, r := range rules {
		for _, at := range calls {
			n := 0
			for _, c := range calls {
				if c.from <= at.from && at.from < extra(r, c) {
					n++
				}
			}
			if n > r.limit {
				t.Fatalf("rule %d per %v: %d calls hold a slot at %v", r.limit, r.window, n, at.from)
			}
		}
	}
}

// TestPropertyAllowMatchesOracle drives limiters with random rules through
// random schedules on a ManualClock. Allow must agree, call by call, with a
// brute-force oracle that admits a call at t exactly when every rule counts
// fewer than limit admissions in (t-window, t]: never more than the rules
// allow, and never less (greedy callers get every call the rules permit).
func TestPropertyAllowMatchesOracle(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 300 {
		rules := randomRules(rng)
		c := NewManualClock(t0)
		l := newRules(t, rules, WithClock(c))
		var admitted []time.Duration
		now := time.Duration(0)
		for range 400 {
			switch rng.IntN(4) {
			case 0: // several calls at the same instant
			case 1:
				now += time.Duration(rng.IntN(3)) * time.Millisecond
			default:
				now += time.Duration(rng.Int64N(int64(rules[0].window)))
			}
			c.Set(t0.Add(now))
			want := true
			for _, r := range rules {
				n := 0
				for _, a := range admitted {
					if a+r.window > now {
						n++
					}
				}
				want = want && n < r.limit
			}
			got := l.Allow()
			if got != want {
				t.Fatalf("trial %d, rules %v: Allow at %v = %v, oracle says %v", trial, rules, now, got, want)
			}
			if got {
				admitted = append(admitted, now)
			}
		}
	}
}

// TestPropertyPermits mixes Allow with Acquire, Done and Cancel at random
// and checks what a server that counts arrivals would see: at no instant do
// more than limit calls hold a slot, counting each from its admission to a
// window after its Done.
func TestPropertyPermits(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		rules := randomRules(rng)
		c := NewManualClock(t0)
		l := newRules(t, rules, WithClock(c))
		type open struct {
			p    Permit
			from time.Duration
		}
		var (
			inflight []open
			calls    []occupancy // to: end of flight; -1 for Allow
			now      time.Duration
		)
		for range 300 {
			now += time.Duration(rng.Int64N(int64(rules[0].window) / 2))
			c.Set(t0.Add(now))
			switch op := rng.IntN(4); {
			case op == 0:
				if l.Allow() {
					calls = append(calls, occupancy{now, -1})
				}
			case op == 1:
				p, err := l.Acquire(expired)
				if err == nil {
					inflight = append(inflight, open{p, now})
				}
			case len(inflight) > 0:
				i := rng.IntN(len(inflight))
				o := inflight[i]
				inflight = slices.Delete(inflight, i, i+1)
				if op == 2 {
					o.p.Done()
					calls = append(calls, occupancy{o.from, now})
				} else {
					o.p.Cancel()
					calls = append(calls, occupancy{o.from, -now - 1}) // marks a cancel
				}
			}
		}
		for _, o := range inflight {
			calls = append(calls, occupancy{o.from, -now - 1})
		}
		checkOccupancy(t, rules, calls, func(r rule, c occupancy) time.Duration {
			switch {
			case c.to == -1: // Allow
				return c.from + r.window
			case c.to < 0: // cancelled, or still in flight at the end
				return -c.to - 1
			default: // done
				return c.to + r.window
			}
		})
	}
}

// expired is a context past its deadline: Acquire with it admits when a
// slot is free and otherwise fails at once.
var expired = func() context.Context {
	ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
	cancel()
	return ctx
}()

// idealCount returns how many calls greedy callers could make before d
// under rules, starting at 0: the k-th call goes a window after the
// limit-th call before it, for the rule that binds last.
func idealCount(rules []rule, d time.Duration) int {
	var s []time.Duration
	for {
		at := time.Duration(0)
		for _, r := range rules {
			if k := len(s) - r.limit; k >= 0 {
				at = max(at, s[k]+r.window)
			}
		}
		if at >= d {
			return len(s)
		}
		s = append(s, at)
	}
}

// TestPropertyWaitSynctest runs greedy goroutines that Wait in a loop on
// the system clock inside a synctest bubble. Their admissions never exceed
// a rule in any window, and they get at least 99% of the calls the rules
// permit in that time.
func TestPropertyWaitSynctest(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for trial := range 40 {
		rules := randomRules(rng)
		workers := 1 + rng.IntN(8)
		span := rules[len(rules)-1].window * time.Duration(3+rng.IntN(4))
		synctest.Test(t, func(t *testing.T) {
			l := newRules(t, rules)
			start := time.Now()
			ctx, cancel := context.WithDeadline(context.Background(), start.Add(span))
			defer cancel()
			var (
				mu    sync.Mutex
				times []time.Duration
				wg    sync.WaitGroup
			)
			for range workers {
				wg.Go(func() {
					for l.Wait(ctx) == nil {
						mu.Lock()
						times = append(times, time.Since(start))
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			calls := make([]occupancy, len(times))
			for i, at := range times {
				calls[i] = occupancy{at, -1}
			}
			checkOccupancy(t, rules, calls, func(r rule, c occupancy) time.Duration { return c.from + r.window })
			ideal := idealCount(rules, span)
			assert.GreaterOrEqual(t, float64(len(times)), 0.99*float64(ideal),
				"trial %d, rules %v, %d workers: %d of %d calls", trial, rules, workers, len(times), ideal)
		})
	}
}

// TestStressTenThousandWaiters queues 10,000 waiters, one after another,
// and checks that each is admitted in its turn: the i-th at the instant the
// rules first allow the i-th call after a full burst, in FIFO order.
func TestStressTenThousandWaiters(t *testing.T) {
	const n = 10_000
	synctest.Test(t, func(t *testing.T) {
		l, err := New(100, time.Second, WithWindow(1000, 20*time.Second))
		require.NoError(t, err)
		start := time.Now()
		fill(t, l, 100)
		admittedAt := make([]time.Duration, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if err := l.Wait(context.Background()); err != nil {
					t.Errorf("waiter %d: %v", i, err)
				}
				admittedAt[i] = time.Since(start)
			})
			synctest.Wait() // waiter i is queued before waiter i+1 starts
		}
		wg.Wait()
		rules := []rule{{100, time.Second}, {1000, 20 * time.Second}}
		var s []time.Duration
		for range 100 {
			s = append(s, 0)
		}
		for i := range n {
			at := time.Duration(0)
			for _, r := range rules {
				if k := len(s) - r.limit; k >= 0 {
					at = max(at, s[k]+r.window)
				}
			}
			s = append(s, at)
			if admittedAt[i] != at {
				t.Fatalf("waiter %d admitted at %v, want %v", i, admittedAt[i], at)
			}
		}
		assert.Equal(t, 0, l.Stats().Waiting)
	})
}

// TestMemoryFollowsCalls checks that a rule's log holds memory for the calls
// in its window, not for its limit: a million per hour that sees ten calls
// holds little, and gives back what a burst took once the burst has left.
func TestMemoryFollowsCalls(t *testing.T) {
	l, c := newManual(t, 1_000_000, time.Hour)
	fill(t, l, 10)
	assert.LessOrEqual(t, cap(l.rules.windows[0].ring), 16)

	fill(t, l, 10_000)
	assert.GreaterOrEqual(t, cap(l.rules.windows[0].ring), 10_010)
	c.Advance(time.Hour)
	for range 20 { // each call may halve the ring
		fill(t, l, 1)
	}
	assert.LessOrEqual(t, cap(l.rules.windows[0].ring), 64, "the burst left; its memory goes too")
	assert.Equal(t, 20, l.Stats().InWindow)
}
