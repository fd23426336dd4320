package throttleserver

import (
	"fmt"
	"net/http"
	"time"
)

// Stats returns a snapshot of everything key did so far.
func (s *Server) Stats(key string) Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	stats := Stats{Limit: s.cfg.Limit, Window: s.cfg.Window}
	if st := s.keys[key]; st != nil {
		stats.Arrivals = append([]Arrival(nil), st.log...)
		stats.Accepted = st.accepted
		stats.Throttled = st.throttled
	}
	return stats
}

// Stats is a snapshot of the arrivals of one API key.
type Stats struct {
	Limit     int
	Window    time.Duration
	Arrivals  []Arrival // every request, in order of arrival
	Accepted  int       // answered 200
	Throttled int       // refused (429 or 403)
}

// BusiestWindow returns the most calls accepted (weighted by their Cost)
// in any half-open interval of length Window. A sliding-window server
// guarantees it is at most Limit.
func (s Stats) BusiestWindow() int {
	return busiest(s.Arrivals, s.Window, func(a Arrival) bool { return a.Status == http.StatusOK })
}

// BusiestWindowAll is like BusiestWindow but counts every arrival, refused
// ones too: how hard the client pushed.
func (s Stats) BusiestWindowAll() int {
	return busiest(s.Arrivals, s.Window, func(Arrival) bool { return true })
}

// busiest returns the most calls (weighted by cost) of the arrivals matching
// keep in any half-open interval [t, t+w). Such a maximum is always reached
// by an interval that starts at an arrival, so two indexes sweeping the
// ordered arrivals find it.
func busiest(arrivals []Arrival, w time.Duration, keep func(Arrival) bool) int {
	var kept []Arrival
	for _, a := range arrivals {
		if keep(a) {
			kept = append(kept, a)
		}
	}
	best, end, sum := 0, 0, 0
	for start := range kept {
		for end < len(kept) && kept[end].At.Sub(kept[start].At) < w {
			sum += max(kept[end].Cost, 1)
			end++
		}
		best = max(best, sum)
		sum -= max(kept[start].Cost, 1)
	}
	return best
}

// Histogram counts the arrivals per bucket of the given length from start:
// accepted[i] and throttled[i] count the arrivals in
// [start + i*bucket, start + (i+1)*bucket). Arrivals before start count in
// the first bucket. Both slices run to the bucket of the last arrival.
func (s Stats) Histogram(start time.Time, bucket time.Duration) (accepted, throttled []int) {
	if bucket <= 0 {
		panic(fmt.Sprintf("throttleserver: histogram bucket must be positive, got %v", bucket))
	}
	n := 0
	for _, a := range s.Arrivals {
		n = max(n, bucketOf(a.At, start, bucket)+1)
	}
	accepted, throttled = make([]int, n), make([]int, n)
	for _, a := range s.Arrivals {
		i := bucketOf(a.At, start, bucket)
		if a.Status == http.StatusOK {
			accepted[i]++
		} else {
			throttled[i]++
		}
	}
	return accepted, throttled
}

func bucketOf(t, start time.Time, bucket time.Duration) int {
	return max(int(t.Sub(start)/bucket), 0)
}
