package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Attempt is one request that went out on the wire, as the Counter saw it.
type Attempt struct {
	Sent   time.Duration // when it was sent, since the Counter's start
	At     time.Duration // when its answer came, since the Counter's start
	Status int           // 0 for a transport error
}

// Counter is an http.RoundTripper that records every request Base sends:
// put it under the limiter's Transport to count the calls that reached the
// server, retries included, and the server's answers. It is safe for
// concurrent use.
type Counter struct {
	Base http.RoundTripper // nil: http.DefaultTransport

	mu       sync.Mutex
	start    time.Time
	attempts []Attempt
}

// NewCounter returns a Counter over base that counts time from now.
func NewCounter(base http.RoundTripper) *Counter {
	return &Counter{Base: base, start: time.Now()}
}

// RoundTrip sends req through Base and records the attempt.
func (c *Counter) RoundTrip(req *http.Request) (*http.Response, error) {
	base := c.Base
	if base == nil {
		base = http.DefaultTransport
	}
	sent := time.Since(c.start)
	resp, err := base.RoundTrip(req)
	a := Attempt{Sent: sent, At: time.Since(c.start)}
	if err == nil {
		a.Status = resp.StatusCode
	}
	c.mu.Lock()
	c.attempts = append(c.attempts, a)
	c.mu.Unlock()
	return resp, err
}

// Attempts returns a copy of the attempts so far, in the order they ended.
func (c *Counter) Attempts() []Attempt {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Attempt(nil), c.attempts...)
}

// Job is a batch of identical calls made by several workers at once.
type Job struct {
	URL     string // the whole URL of each call
	Key     string // sent as X-API-Key
	Calls   int
	Workers int
}

// Result is what a Job achieved.
type Result struct {
	Calls    int           // calls made
	Failed   int           // calls that did not end in 200 (error or other status)
	Errors   []string      // the distinct failures, for a report
	Wall     time.Duration // from the first call to the last answer
	Attempts []Attempt     // every request that reached the server
}

// Throttled counts the attempts answered with one of statuses (429 when
// none is given).
func (r Result) Throttled(statuses ...int) int { return r.ThrottledAfter(-1, statuses...) }

// ThrottledAfter counts the attempts answered with one of statuses (429
// when none is given) that ended later than after.
func (r Result) ThrottledAfter(after time.Duration, statuses ...int) int {
	if len(statuses) == 0 {
		statuses = []int{http.StatusTooManyRequests}
	}
	n := 0
	for _, a := range r.Attempts {
		for _, s := range statuses {
			if a.Status == s && a.At > after {
				n++
			}
		}
	}
	return n
}

// Unforeseen counts the attempts answered 429 that ended later than after
// and were sent after the first 429 had come back: the refusals a client
// could have foreseen, once it had been refused. Requests already on the
// wire when the first refusal came are not counted: several workers'
// calls can be refused at once before any answer is read.
func (r Result) Unforeseen(after time.Duration) int {
	first := r.FirstThrottled()
	if first < 0 {
		return 0
	}
	n := 0
	for _, a := range r.Attempts {
		if a.Status == http.StatusTooManyRequests && a.At > after && a.Sent >= first {
			n++
		}
	}
	return n
}

// FirstThrottled returns when the first of statuses (429 when none is
// given) ended, or -1 when none did.
func (r Result) FirstThrottled(statuses ...int) time.Duration {
	if len(statuses) == 0 {
		statuses = []int{http.StatusTooManyRequests}
	}
	first := time.Duration(-1)
	for _, a := range r.Attempts {
		for _, s := range statuses {
			if a.Status == s && (first < 0 || a.At < first) {
				first = a.At
			}
		}
	}
	return first
}

// Run makes job's calls through client and returns what happened; counter
// must be the Counter under client's Transport, made just before.
func Run(ctx context.Context, client *http.Client, counter *Counter, job Job) Result {
	var next, failed atomic.Int64
	var mu sync.Mutex
	seen := map[string]bool{}
	res := Result{Calls: job.Calls}
	start := time.Now()
	var wg sync.WaitGroup
	for range job.Workers {
		wg.Go(func() {
			for next.Add(1) <= int64(job.Calls) {
				if err := call(ctx, client, job); err != nil {
					failed.Add(1)
					mu.Lock()
					if !seen[err.Error()] {
						seen[err.Error()] = true
						res.Errors = append(res.Errors, err.Error())
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	res.Wall = time.Since(start)
	res.Failed = int(failed.Load())
	res.Attempts = counter.Attempts()
	return res
}

func call(ctx context.Context, client *http.Client, job Job) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, job.URL, nil)
	if err != nil {
		return err
	}
	req.Header.Set(KeyHeader, job.Key)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	return nil
}
