/*
 * The KCL MultiLangDaemon, started with the leader-lock timing its properties file cannot set.
 *
 * KCL 3 assigns leases from one worker, the holder of the leader lock (the "Leader" item of
 * <app>-CoordinatorState). Its lease (120 s) and heartbeat (30 s) are settings of KCL core's
 * LeaseManagementConfig since 3.2.0, but the MultiLangDaemon (3.1.3, the newest served) has no
 * properties key for them: with its defaults, a kill -9 of the leader leaves the dead worker's
 * shards unconsumed for ~2 minutes. This class does what MultiLangDaemon.main does, with public
 * KCL API only, and sets those two values on the Scheduler's LeaseManagementConfig before it runs
 * (the Scheduler reads them when it creates the leader decider, in run()).
 *
 * After a graceful shutdown (SIGTERM) it also hands this worker's leases back (release below), so
 * another worker takes them in seconds instead of after failoverTimeMillis.
 *
 * Its own keys live in the same properties file (KCL ignores keys it does not know):
 *   thyme.leaderLockLeaseMillis      the lock's lease (KCL: 120000)
 *   thyme.leaderLockHeartbeatMillis  how often the leader renews it (KCL: 30000); must be less
 *   thyme.prefetchBatches            polling: batches fetched ahead per shard (KCL: 4)
 *   thyme.prefetchBytes              polling: bytes fetched ahead per shard (KCL: 8 MiB)
 * The last two bound what the JVM holds for a backlogged shard (a memory budget: `run
 * --memory-budget`); the properties file has no keys for them either.
 *
 * Compiled by `thyme kinesis install-jars` (or the first `thyme kinesis run`) against the pinned
 * classpath with javac; without a JDK the launcher starts MultiLangDaemon itself and says so.
 * Usage: java -cp "<kcl jars>/*:<this class>" thyme.kinesis.ThymeMultiLangDaemon -p FILE [-l LOGBACK]
 */
package thyme.kinesis;

import ch.qos.logback.classic.LoggerContext;
import ch.qos.logback.classic.joran.JoranConfigurator;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Properties;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import software.amazon.kinesis.coordinator.Scheduler;
import software.amazon.kinesis.leases.Lease;
import software.amazon.kinesis.leases.LeaseManagementConfig;
import software.amazon.kinesis.leases.LeaseRefresher;
import software.amazon.kinesis.multilang.MultiLangDaemonConfig;
import software.amazon.kinesis.retrieval.RetrievalConfig;
import software.amazon.kinesis.retrieval.polling.PollingConfig;

public final class ThymeMultiLangDaemon {
    static final String LEASE_KEY = "thyme.leaderLockLeaseMillis";
    static final String HEARTBEAT_KEY = "thyme.leaderLockHeartbeatMillis";
    static final String PREFETCH_BATCHES_KEY = "thyme.prefetchBatches";
    static final String PREFETCH_BYTES_KEY = "thyme.prefetchBytes";

    private ThymeMultiLangDaemon() {}

    /** The lock timing read from the properties file: {lease, heartbeat} in ms, 0 where unset. */
    static long[] lockTiming(Properties properties) {
        long lease = millis(properties, LEASE_KEY);
        long heartbeat = millis(properties, HEARTBEAT_KEY);
        if (lease > 0 && heartbeat > 0 && heartbeat >= lease) {
            throw new IllegalArgumentException(HEARTBEAT_KEY + " (" + heartbeat + ") must be less than "
                    + LEASE_KEY + " (" + lease + "): the leader renews the lock within its lease");
        }
        return new long[] {lease, heartbeat};
    }

    /** The prefetch bounds read from the properties file: {batches, bytes}, 0 where unset. */
    static long[] prefetch(Properties properties) {
        long bytes = positive(properties, PREFETCH_BYTES_KEY, "a positive number of bytes");
        if (bytes > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(PREFETCH_BYTES_KEY + ": at most " + Integer.MAX_VALUE + ", got " + bytes);
        }
        long batches = positive(properties, PREFETCH_BATCHES_KEY, "a positive number of batches");
        if (batches > 1000) {
            throw new IllegalArgumentException(PREFETCH_BATCHES_KEY + ": at most 1000, got " + batches);
        }
        return new long[] {batches, bytes};
    }

    /**
     * Sets the prefetch bounds on the Scheduler's polling configuration, before run() builds the
     * retrieval factory from it; with fan-out (no prefetch cache of this kind) it does nothing.
     * Returns whether they apply.
     */
    static boolean apply(RetrievalConfig retrieval, long[] prefetch) {
        if (!(retrieval.retrievalSpecificConfig() instanceof PollingConfig polling)) {
            return false;
        }
        if (prefetch[0] > 0) {
            polling.maxPendingProcessRecordsInput((int) prefetch[0]);
        }
        if (prefetch[1] > 0) {
            polling.recordsFetcherFactory().maxByteSize((int) prefetch[1]);
        }
        return true;
    }

    private static long millis(Properties properties, String key) {
        return positive(properties, key, "a positive number of milliseconds");
    }

    private static long positive(Properties properties, String key, String expected) {
        String text = properties.getProperty(key);
        if (text == null || text.isBlank()) {
            return 0;
        }
        try {
            long value = Long.parseLong(text.trim());
            if (value <= 0) {
                throw new NumberFormatException();
            }
            return value;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(key + ": expected " + expected + ", got " + text);
        }
    }

    /** Sets the lock timing on the Scheduler's own LeaseManagementConfig (0: KCL's default). */
    static void apply(LeaseManagementConfig config, long[] timing) {
        if (timing[0] > 0) {
            config.dynamoDbLockBasedLeaderLeaseDurationInMillis(timing[0]);
        }
        if (timing[1] > 0) {
            config.dynamoDbLockBasedLeaderHeartbeatPeriodInMillis(timing[1]);
        }
    }

    /**
     * Hands this worker's leases back after a graceful shutdown (every shard checkpointed), so the
     * leader assigns them at its next run instead of waiting failoverTimeMillis for them to expire:
     * a rolling deploy pauses a shard for seconds. Each eviction is conditional on this worker
     * still owning the lease; a failure leaves the lease to expire as before. A lease the leader
     * was handing from this worker to another (leaseOwner the other, checkpointOwner this one)
     * would otherwise wait for the handoff to time out.
     */
    static void release(LeaseRefresher refresher, String worker, Logger log) {
        int released = 0;
        try {
            for (Lease lease : refresher.listLeases()) {
                // a lease in KCL 3's graceful handoff names the next owner and this worker as its
                // checkpointOwner: evicting it clears checkpointOwner, and the next owner starts at once
                boolean ours = worker.equals(lease.leaseOwner()) || worker.equals(lease.checkpointOwner());
                if (ours && refresher.evictLease(lease)) {
                    released++;
                }
            }
            log.info("released {} leases of worker {} for the others to take at once", released, worker);
        } catch (Exception e) {
            log.warn("could not release the leases of worker {} (they expire after failoverTimeMillis): {}", worker,
                    e.toString());
        }
    }

    public static void main(String[] args) {
        String propertiesFile = null;
        String logConfiguration = null;
        for (int i = 0; i < args.length; i++) {
            boolean hasValue = i + 1 < args.length;
            if ((args[i].equals("-p") || args[i].equals("--properties-file")) && hasValue) {
                propertiesFile = args[++i];
            } else if ((args[i].equals("-l") || args[i].equals("--log-configuration")) && hasValue) {
                logConfiguration = args[++i];
            } else {
                System.err.println("usage: ThymeMultiLangDaemon --properties-file FILE [--log-configuration LOGBACK_XML]");
                System.exit(2);
            }
        }
        if (propertiesFile == null) {
            System.err.println("usage: ThymeMultiLangDaemon --properties-file FILE [--log-configuration LOGBACK_XML]");
            System.exit(2);
        }
        System.exit(run(propertiesFile, logConfiguration));
    }

    static int run(String propertiesFile, String logConfiguration) {
        Logger log = LoggerFactory.getLogger(ThymeMultiLangDaemon.class);
        try {
            if (logConfiguration != null) {
                configureLogging(logConfiguration);
            }
            Properties own = new Properties();
            try (Reader reader = Files.newBufferedReader(Paths.get(propertiesFile), StandardCharsets.ISO_8859_1)) {
                own.load(reader);
            }
            long[] timing = lockTiming(own);
            long[] prefetch = prefetch(own);
            MultiLangDaemonConfig config = new MultiLangDaemonConfig(propertiesFile);
            Scheduler scheduler =
                    config.getMultiLangDaemonConfiguration().build(config.getRecordProcessorFactory());
            LeaseManagementConfig leases = scheduler.leaseManagementConfig();
            apply(leases, timing);
            log.info(
                    "leader lock lease {} ms, heartbeat {} ms",
                    leases.dynamoDbLockBasedLeaderLeaseDurationInMillis(),
                    leases.dynamoDbLockBasedLeaderHeartbeatPeriodInMillis());
            if (apply(scheduler.retrievalConfig(), prefetch)
                    && scheduler.retrievalConfig().retrievalSpecificConfig() instanceof PollingConfig polling) {
                log.info(
                        "prefetch per shard: {} batches, {} bytes",
                        polling.maxPendingProcessRecordsInput(),
                        polling.recordsFetcherFactory().maxByteSize());
            }
            long grace = config.getMultiLangDaemonConfiguration().getShutdownGraceMillis();
            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                log.info("Process terminated, will initiate shutdown.");
                try {
                    boolean drained = scheduler.startGracefulShutdown().get(grace, TimeUnit.MILLISECONDS);
                    log.info("Process shutdown is complete.");
                    if (drained) {
                        release(scheduler.leaseRefresher(), leases.workerIdentifier(), log);
                    }
                } catch (Exception e) {
                    log.error("Encountered an error during shutdown.", e);
                }
            }));
            Future<Integer> running = config.getExecutorService().submit(() -> {
                try {
                    scheduler.run();
                    return 0;
                } catch (Throwable t) {
                    log.error("Caught throwable while processing data", t);
                    return 1;
                }
            });
            return running.get();
        } catch (Throwable t) {
            log.error("the KCL daemon could not start: {}", t.toString(), t);
            System.err.println("ThymeMultiLangDaemon: " + t);
            return 1;
        }
    }

    private static void configureLogging(String path) throws Exception {
        LoggerContext context = (LoggerContext) LoggerFactory.getILoggerFactory();
        context.reset();
        JoranConfigurator configurator = new JoranConfigurator();
        configurator.setContext(context);
        try (InputStream in = new FileInputStream(path)) {
            configurator.doConfigure(in);
        } catch (IOException e) {
            throw new IOException("cannot read the log configuration " + path + ": " + e.getMessage(), e);
        }
    }
}
