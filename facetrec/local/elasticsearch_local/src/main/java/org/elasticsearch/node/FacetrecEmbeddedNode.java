package org.elasticsearch.node;

import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.ClasspathPluginsService;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.PluginsLoader;

import java.util.Collection;
import java.util.Map;
import java.util.Set;

/**
 * A real Elasticsearch {@link Node} whose plugins come from the JVM classpath instead of a
 * distribution's modules/ and plugins/ folders.
 *
 * <p>It lives in {@code org.elasticsearch.node} because the node-construction hooks
 * ({@code NodeConstruction}, {@code NodeServiceProvider}) are package-private (still so in 9.5).
 */
public final class FacetrecEmbeddedNode extends Node {

    public FacetrecEmbeddedNode(Environment environment, Collection<Class<? extends Plugin>> classpathPlugins) {
        super(NodeConstruction.prepareConstruction(environment, emptyPluginsLoader(), new NodeServiceProvider() {
            @Override
            org.elasticsearch.plugins.PluginsService newPluginService(Environment env, PluginsLoader loader) {
                return new ClasspathPluginsService(env, loader, classpathPlugins);
            }
        }, true));
    }

    /**
     * No module or plugin bundles from disk, and no server-module qualified exports: everything,
     * the server included, sits on the classpath (the unnamed module).
     */
    private static PluginsLoader emptyPluginsLoader() {
        return PluginsLoader.createPluginsLoader(Set.of(), Set.of(), Map.of(), false);
    }
}
