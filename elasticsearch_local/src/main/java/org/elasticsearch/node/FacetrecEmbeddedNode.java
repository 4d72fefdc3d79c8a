package org.elasticsearch.node;

import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.ClasspathPluginsService;
import org.elasticsearch.plugins.Plugin;

import java.util.Collection;

/**
 * A real Elasticsearch {@link Node} whose plugins come from the JVM classpath instead of a
 * distribution's modules/ and plugins/ folders.
 *
 * <p>It lives in {@code org.elasticsearch.node} because the node-construction hooks
 * ({@code NodeConstruction}, {@code NodeServiceProvider}) are package-private in 8.14.
 */
public final class FacetrecEmbeddedNode extends Node {

    public FacetrecEmbeddedNode(Environment environment, Collection<Class<? extends Plugin>> classpathPlugins) {
        super(NodeConstruction.prepareConstruction(environment, new NodeServiceProvider() {
            @Override
            org.elasticsearch.plugins.PluginsService newPluginService(Environment env, Settings settings) {
                return new ClasspathPluginsService(settings, env, classpathPlugins);
            }
        }, true));
    }
}
