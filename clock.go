package limiter

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// Clock is the source of time for a Limiter. Tests inject a ManualClock;
// production code uses SystemClock, which New picks when no clock is given.
//
// Implementations must be safe for concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a Timer that sends the current time on its channel
	// once d has passed. A d <= 0 fires at once.
	NewTimer(d time.Duration) Timer
}

// Timer is a single-shot timer made by a Clock, like time.Timer.
type Timer interface {
	// C returns the channel on which the time is delivered when the timer fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing. It reports whether it did so,
	// false when the timer had already fired or been stopped.
	Stop() bool
}

// TimerAtClock is a Clock that can also make a timer for an instant. A
// Limiter uses TimerAt when its clock has it, so that a clock moved between
// the limiter's reading and the timer's making cannot make the timer late.
// ManualClock implements it.
type TimerAtClock interface {
	Clock
	// TimerAt returns a Timer that fires when the clock reaches when, at
	// once if it already has.
	TimerAt(when time.Time) Timer
}

// SystemClock returns the Clock of the time package: time.Now and
// time.NewTimer. Inside a testing/synctest bubble these run on the bubble's
// fake time, so a Limiter using SystemClock can be tested there too.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

// sysTimer adapts *time.Timer; its C method shadows the promoted field.
type sysTimer struct{ *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.Timer.C }

// ManualClock is a Clock whose time moves only when told to, by Advance or
// Set. Timers made by NewTimer fire when the clock reaches their instant, so
// a test can step a Limiter through a window rollover to the nanosecond
// without sleeping. Waiters and BlockUntil let a test wait until a goroutine
// under test is blocked on a timer before moving the clock.
//
// The zero ManualClock reads the zero time. A ManualClock is safe for
// concurrent use.
type ManualClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  timerHeap     // pending timers, earliest first
	seq     uint64        // creation order, to fire timers due at the same instant in order
	changed chan struct{} // closed and replaced whenever the set of pending timers changes
}

// NewManualClock returns a ManualClock that reads start until it is moved.
func NewManualClock(start time.Time) *ManualClock {
	return &ManualClock{now: start, changed: make(chan struct{})}
}

// Now returns the clock's current time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a Timer that fires when the clock reaches Now()+d.
// A d <= 0 fires at once and is never counted by Waiters.
func (c *ManualClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.timerAtLocked(c.now.Add(d))
}

// TimerAt returns a Timer that fires when the clock reaches when, at once
// if it has already.
func (c *ManualClock) TimerAt(when time.Time) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.timerAtLocked(when)
}

func (c *ManualClock) timerAtLocked(when time.Time) Timer {
	t := &manualTimer{clock: c, c: make(chan time.Time, 1), when: when, index: -1}
	if !when.After(c.now) {
		t.c <- c.now
		return t
	}
	c.seq++
	t.seq = c.seq
	heap.Push(&c.timers, t)
	c.notifyLocked()
	return t
}

// Advance moves the clock forward by d, firing every timer that falls due, in
// the order of their instants (creation order for equal instants); each
// timer delivers its own instant. A negative d is treated as 0.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d < 0 {
		d = 0
	}
	c.moveLocked(c.now.Add(d))
}

// Set moves the clock to t, firing every timer due at or before t, in order.
// t may lie in the past: the clock then reads t, and pending timers wait
// until the clock reaches their instants again.
func (c *ManualClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Before(c.now) {
		c.now = t
		return
	}
	c.moveLocked(t)
}

func (c *ManualClock) moveLocked(target time.Time) {
	fired := false
	for len(c.timers) > 0 && !c.timers[0].when.After(target) {
		t := heap.Pop(&c.timers).(*manualTimer)
		c.now = t.when
		t.c <- t.when // buffered, and each timer fires once: never blocks
		fired = true
	}
	c.now = target
	if fired {
		c.notifyLocked()
	}
}

// Waiters returns how many timers have been made and have neither fired nor
// been stopped: in a Limiter's tests, how many callers sleep on the clock.
// (A caller of Wait that waits only for permits in flight to end sleeps on
// no timer; Stats().Waiting counts every waiter.)
func (c *ManualClock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// BlockUntil blocks until Waiters() >= n, and returns nil then, or returns
// ctx.Err() if ctx ends first.
func (c *ManualClock) BlockUntil(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		if len(c.timers) >= n {
			c.mu.Unlock()
			return nil
		}
		if c.changed == nil { // the zero ManualClock
			c.changed = make(chan struct{})
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *ManualClock) notifyLocked() {
	if c.changed != nil {
		close(c.changed)
	}
	c.changed = make(chan struct{})
}

type manualTimer struct {
	clock *ManualClock
	c     chan time.Time
	when  time.Time
	seq   uint64
	index int // position in clock.timers, -1 once fired or stopped
}

func (t *manualTimer) C() <-chan time.Time { return t.c }

func (t *manualTimer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.index < 0 {
		return false
	}
	heap.Remove(&c.timers, t.index)
	c.notifyLocked()
	return true
}

// timerHeap orders pending timers by instant, then by creation.
type timerHeap []*manualTimer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if h[i].when.Equal(h[j].when) {
		return h[i].seq < h[j].seq
	}
	return h[i].when.Before(h[j].when)
}
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *timerHeap) Push(x any) {
	t := x.(*manualTimer)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.index = -1
	*h = old[:len(old)-1]
	return t
}
