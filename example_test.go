package limiter_test

import (
	"context"
	"fmt"
	"time"

	"github.com/apiquota/limiter"
)

// The default quota: 100 calls in any 60 seconds, the full burst at once.
func Example() {
	l, err := limiter.New(limiter.DefaultLimit, limiter.DefaultWindow)
	if err != nil {
		panic(err)
	}
	admitted := 0
	for range 150 {
		if l.Allow() {
			admitted++
		}
	}
	fmt.Println("admitted now:", admitted)
	fmt.Println("remaining:", l.Remaining())
	// Output:
	// admitted now: 100
	// remaining: 0
}

// Wait blocks until the call may go: here the third call waits until the
// first leaves the 50 ms window.
func ExampleLimiter_Wait() {
	l, err := limiter.New(2, 50*time.Millisecond)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	start := time.Now()
	for range 3 {
		if err := l.Wait(ctx); err != nil {
			panic(err)
		}
	}
	fmt.Println("3 calls; the third waited a full window:", time.Since(start) >= 50*time.Millisecond)
	// Output:
	// 3 calls; the third waited a full window: true
}

// Acquire holds a slot while the call is in flight; Done starts its window
// when the call has finished, Cancel returns the slot of a call never sent.
func ExampleLimiter_Acquire() {
	clock := limiter.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l, err := limiter.New(1, time.Minute, limiter.WithClock(clock))
	if err != nil {
		panic(err)
	}
	p, err := l.Acquire(context.Background())
	if err != nil {
		panic(err)
	}
	clock.Advance(5 * time.Second) // the request takes 5s
	p.Done()
	fmt.Println("free after 59s:", advanceAndAllow(clock, l, 59*time.Second))
	fmt.Println("free after 60s:", advanceAndAllow(clock, l, time.Second))
	// Output:
	// free after 59s: false
	// free after 60s: true
}

func advanceAndAllow(c *limiter.ManualClock, l *limiter.Limiter, d time.Duration) bool {
	c.Advance(d)
	return l.Allow()
}

// Several rules hold at once: 100 per minute and 1,500 per hour.
func ExampleWithWindow() {
	clock := limiter.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l, err := limiter.New(100, time.Minute, limiter.WithWindow(1500, time.Hour), limiter.WithClock(clock))
	if err != nil {
		panic(err)
	}
	admitted := 0
	for range 60 { // one minute after another, for an hour
		for l.Allow() {
			admitted++
		}
		clock.Advance(time.Minute)
	}
	fmt.Println("admitted in the hour:", admitted)
	// Output:
	// admitted in the hour: 1500
}

// A ManualClock steps a limiter through a window rollover to the
// nanosecond, with no sleeping.
func ExampleManualClock() {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := limiter.NewManualClock(t0)
	l, err := limiter.New(100, 60*time.Second, limiter.WithClock(clock))
	if err != nil {
		panic(err)
	}
	for range 100 {
		l.Allow()
	}
	fmt.Println("101st at t0:", l.Allow())
	clock.Set(t0.Add(59*time.Second + 999*time.Millisecond))
	fmt.Println("at t0+59.999s:", l.Allow())
	clock.Set(t0.Add(60 * time.Second))
	fmt.Println("at t0+60s:", l.Allow())
	// Output:
	// 101st at t0: false
	// at t0+59.999s: false
	// at t0+60s: true
}

// New returns an error, and no limiter, for nonsense.
func ExampleNew_errors() {
	_, err := limiter.New(100, time.Minute, limiter.WithWindow(200, time.Minute))
	fmt.Println(err)
	_, err = limiter.New(0, time.Minute)
	fmt.Println(err)
	// Output:
	// limiter: rule 200 per 1m0s is no tighter than rule 100 per 1m0s
	// limiter: limit must be positive, got 0
}

// A leaky bucket on top of a window: 100 per minute, but at most 6 at
// once and then one each 100 ms, as nginx's limit_req rate=10r/s burst=5
// enforces.
func ExampleWithBucket() {
	clock := limiter.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l, err := limiter.New(100, time.Minute,
		limiter.WithBucket(6, 100*time.Millisecond), limiter.WithClock(clock))
	if err != nil {
		panic(err)
	}
	burst := 0
	for l.Allow() {
		burst++
	}
	fmt.Println("at once:", burst)
	fmt.Println("after 50ms:", advanceAndAllow(clock, l, 50*time.Millisecond))
	fmt.Println("after 100ms:", advanceAndAllow(clock, l, 50*time.Millisecond))
	// Output:
	// at once: 6
	// after 50ms: false
	// after 100ms: true
}

// A call of weight n counts as n calls: a $batch of 20 requests that the
// server charges 20.
func ExampleLimiter_AllowN() {
	l, err := limiter.New(100, time.Minute)
	if err != nil {
		panic(err)
	}
	fmt.Println("batch of 20:", l.AllowN(20))
	fmt.Println("remaining:", l.Remaining())
	fmt.Println("batch of 101:", l.AllowN(101)) // more than the rule ever admits
	// Output:
	// batch of 20: true
	// remaining: 80
	// batch of 101: false
}

// A process that runs every few minutes saves its limiter on exit and
// restores it on start, so that it does not send the burst that the server
// would refuse.
func ExampleLimiter_MarshalBinary() {
	clock := limiter.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	first, _ := limiter.New(100, time.Minute, limiter.WithClock(clock))
	first.AllowN(90)
	state, err := first.MarshalBinary() // e.g. os.WriteFile(path, state, 0o600)
	if err != nil {
		panic(err)
	}

	clock.Advance(10 * time.Second) // the process restarts
	next, _ := limiter.New(100, time.Minute, limiter.WithClock(clock))
	if err := next.UnmarshalBinary(state); err != nil {
		panic(err) // not a snapshot: start empty, or refuse to start
	}
	fmt.Println("remaining after restart:", next.Remaining())
	// Output:
	// remaining after restart: 10
}
