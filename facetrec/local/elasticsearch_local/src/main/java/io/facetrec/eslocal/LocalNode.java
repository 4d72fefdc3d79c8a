package io.facetrec.eslocal;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.FacetrecEmbeddedNode;
import org.elasticsearch.node.Node;
import org.elasticsearch.transport.netty4.Netty4Plugin;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Starts ONE real Elasticsearch node in this JVM, bound to 127.0.0.1.
 *
 * <pre>
 * java -cp ... io.facetrec.eslocal.LocalNode --home DIR --http-port 9250 --transport-port 9350
 *      [--cluster-name facetrec-local] [--node-name node-0]
 *      [--seed-hosts 127.0.0.1:9350,127.0.0.1:9351 --initial-masters node-0,node-1,node-2]
 *      [--setting key=value ...]
 * </pre>
 *
 * Without --seed-hosts the node runs as a single-node cluster. Several JVMs started with the same
 * --seed-hosts and --initial-masters form one cluster. SIGTERM closes the node cleanly; the process
 * exits non-zero if the node fails to start (the reason is printed on stderr and logged).
 */
public final class LocalNode {

    public static void main(String[] args) throws Exception {
        Map<String, String> opts = parse(args);
        Path home = Path.of(require(opts, "home")).toAbsolutePath();
        Files.createDirectories(home.resolve("config"));
        Files.createDirectories(home.resolve("plugins"));
        Files.createDirectories(home.resolve("modules"));

        Settings.Builder settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", opts.getOrDefault("data", home.resolve("data").toString()))
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", opts.getOrDefault("cluster-name", "facetrec-local"))
            .put("node.name", opts.getOrDefault("node-name", "node-0"))
            .put("network.host", "127.0.0.1")
            .put("http.port", require(opts, "http-port"))
            .put("transport.port", require(opts, "transport-port"))
            // A developer machine or CI box often has little free disk: never block writes for it.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("indices.breaker.total.use_real_memory", false)
            .put("action.destructive_requires_name", false);
        if (opts.containsKey("seed-hosts")) {
            settings.putList("discovery.seed_hosts", List.of(opts.get("seed-hosts").split(",")));
            settings.putList("cluster.initial_master_nodes", List.of(require(opts, "initial-masters").split(",")));
        } else {
            settings.put("discovery.type", "single-node");
        }
        for (String kv : opts.getOrDefault("setting", "").split("\u0000")) {
            if (kv.isEmpty()) continue;
            int eq = kv.indexOf('=');
            if (eq <= 0) throw new IllegalArgumentException("--setting expects key=value, got: " + kv);
            settings.put(kv.substring(0, eq), kv.substring(eq + 1));
        }

        Settings built = settings.build();
        // Console logging (stdout/stderr); the Python launcher redirects both into <home>/logs/node.log.
        LogConfigurator.configureESLogging();
        LogConfigurator.setNodeName(built.get("node.name"));
        LogConfigurator.configureWithoutConfig(built);
        Environment environment = new Environment(built, home.resolve("config"));
        Node node;
        try {
            node = new FacetrecEmbeddedNode(environment, List.of(Netty4Plugin.class, RootInfoPlugin.class, VectorScriptPlugin.class));
            node.start();
        } catch (Throwable t) {
            System.err.println("facetrec-es-local: node failed to start: " + t);
            t.printStackTrace();
            System.exit(3);
            return;
        }

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                System.err.println("facetrec-es-local: error while closing node: " + e);
            } finally {
                stopped.countDown();
            }
        }, "facetrec-es-local-shutdown"));
        System.out.println("facetrec-es-local: node started, http 127.0.0.1:" + opts.get("http-port"));
        System.out.flush();
        stopped.await();
    }

    private static String require(Map<String, String> opts, String name) {
        String value = opts.get(name);
        if (value == null || value.isBlank()) {
            throw new IllegalArgumentException("missing required option --" + name);
        }
        return value;
    }

    private static Map<String, String> parse(String[] args) {
        Map<String, String> opts = new LinkedHashMap<>();
        for (int i = 0; i < args.length; i++) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                throw new IllegalArgumentException("expected --option value pairs, got: " + String.join(" ", args));
            }
            String key = args[i].substring(2);
            String value = args[++i];
            opts.merge(key, value, (a, b) -> a + "\u0000" + b); // repeated --setting options accumulate
        }
        return opts;
    }
}
