/* The C peer of `gateway-bench mqtt`: the same job with libmosquitto (Debian's libmosquitto-dev),
 * from its documented API (mosquitto.h). Publishes COUNT messages of SIZE bytes at each QoS to
 * 127.0.0.1:PORT with at most WINDOW in flight, and prints messages/second: the time from the
 * first publish to the broker's last acknowledgement (QoS 1/2) or the last write (QoS 0).
 * Build: cc -O2 -o mosquitto_bench mosquitto_bench.c -lmosquitto
 * Usage: mosquitto_bench PORT [COUNT] [SIZE] [WINDOW] */
#include <mosquitto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Completed publishes, counted by libmosquitto's thread; the publishing thread waits on `more`. */
static int done;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;

static void on_publish(struct mosquitto *m, void *obj, int mid) {
    (void)m; (void)obj; (void)mid;
    pthread_mutex_lock(&lock);
    done++;
    pthread_cond_signal(&more);
    pthread_mutex_unlock(&lock);
}

/* Waits until at least `n` publishes completed. */
static void wait_done(int n) {
    pthread_mutex_lock(&lock);
    while (done < n) pthread_cond_wait(&more, &lock);
    pthread_mutex_unlock(&lock);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s PORT [COUNT] [SIZE] [WINDOW]\n", argv[0]); return 64; }
    int port = atoi(argv[1]);
    int count = argc > 2 ? atoi(argv[2]) : 100000;
    int size = argc > 3 ? atoi(argv[3]) : 16;
    int window = argc > 4 ? atoi(argv[4]) : 100;
    char *payload = malloc(size);
    memset(payload, 'A', size);
    mosquitto_lib_init();
    for (int qos = 0; qos <= 2; qos++) {
        char id[32];
        snprintf(id, sizeof id, "c-bench-%d", qos);
        struct mosquitto *m = mosquitto_new(id, true, NULL);
        mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
        mosquitto_max_inflight_messages_set(m, window);
        mosquitto_publish_callback_set(m, on_publish);
        if (mosquitto_connect(m, "127.0.0.1", port, 60) != MOSQ_ERR_SUCCESS) { fprintf(stderr, "connect failed\n"); return 1; }
        mosquitto_loop_start(m);
        pthread_mutex_lock(&lock);
        done = 0;
        pthread_mutex_unlock(&lock);
        double start = now();
        for (int i = 0; i < count; i++) {
            /* At most WINDOW published and not yet completed, as `gateway-bench mqtt` awaits. */
            if (i >= window) wait_done(i - window + 1);
            char topic[16];
            snprintf(topic, sizeof topic, "bench/%d", qos);
            int rc = mosquitto_publish(m, NULL, topic, size, payload, qos, false);
            if (rc != MOSQ_ERR_SUCCESS) { fprintf(stderr, "publish: %s\n", mosquitto_strerror(rc)); return 1; }
        }
        wait_done(count);
        double secs = now() - start;
        printf("libmosquitto QoS %d: %d messages of %d B, %d in flight at most: %d msg/s (%.2f s)\n", qos, count, size, window, (int)(count / secs), secs);
        mosquitto_disconnect(m);
        mosquitto_loop_stop(m, false);
        mosquitto_destroy(m);
    }
    mosquitto_lib_cleanup();
    return 0;
}
