// Command basic is the smallest use of the limiter: call Wait before each
// request, and the calls never exceed the quota.
//
// It starts a local HTTP server on the loopback interface and makes -calls
// requests to it, at most -limit in any -window. The defaults (5 calls per
// second, 12 calls) finish in about two seconds; the APIs this module was
// built for allow limiter.DefaultLimit calls per limiter.DefaultWindow:
//
//	go run ./examples/basic
//	go run ./examples/basic -limit 100 -window 60s -calls 120
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"time"

	"github.com/apiquota/limiter"
)

func main() {
	limit := flag.Int("limit", 5, "calls allowed per window (the real quota is 100)")
	window := flag.Duration("window", time.Second, "length of the sliding window (the real quota is 60s)")
	calls := flag.Int("calls", 12, "calls to make")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	// A stand-in for the API, on a loopback port.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `{"ok":true}`)
	}))
	defer api.Close()

	l, err := limiter.New(*limit, *window)
	if err != nil {
		log.Fatal(err)
	}

	start := time.Now()
	for i := 1; i <= *calls; i++ {
		// Wait blocks until one more call fits in the window: the first
		// -limit calls go at once, then each waits for the oldest call
		// to leave the window.
		if err := l.Wait(ctx); err != nil {
			log.Fatal(err)
		}
		admitted := time.Since(start)
		status, err := get(ctx, api.URL)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("call %2d admitted at %6.3fs: %s\n", i, admitted.Seconds(), status)
	}
	fmt.Printf("%d calls in %.2fs, never more than %d per %v\n",
		*calls, time.Since(start).Seconds(), *limit, *window)
}

// get makes one request and returns its status.
func get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.Status, err
}
