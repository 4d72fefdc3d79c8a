package org.elasticsearch.plugins;

import org.elasticsearch.Build;
import org.elasticsearch.action.admin.cluster.node.info.PluginsAndModules;
import org.elasticsearch.env.Environment;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;

/**
 * A {@link PluginsService} that adds plugins found on the classpath (e.g. Netty4Plugin, which
 * provides the HTTP and transport layers) to whatever the {@link PluginsLoader} found on disk
 * (nothing, for the local node).
 *
 * <p>In {@code org.elasticsearch.plugins} because {@code LoadedPlugin} and {@code loadPlugin}
 * are package-private. Plugins listed here show up in {@code GET _nodes/plugins}, which is how
 * callers detect capabilities such as painless or facetrec's own script language.
 */
public final class ClasspathPluginsService extends PluginsService {

    private final List<LoadedPlugin> allPlugins;
    private final PluginsAndModules allInfo;

    public ClasspathPluginsService(Environment env, PluginsLoader loader, Collection<Class<? extends Plugin>> classpathPlugins) {
        super(env.settings(), env.configDir(), loader);
        List<LoadedPlugin> loaded = new ArrayList<>();
        List<PluginRuntimeInfo> infos = new ArrayList<>(super.info().getPluginInfos());
        for (Class<? extends Plugin> type : classpathPlugins) {
            PluginDescriptor descriptor = new PluginDescriptor(
                type.getName(),                      // name
                "loaded from the classpath by facetrec-es-local",
                Build.current().version(),           // plugin version
                Build.current().version(),           // elasticsearch version
                Integer.toString(Runtime.version().feature()),
                type.getName(),                      // classname
                null,                                // module name
                List.of(),                           // extended plugins
                false, false, false, false,          // native controller, licensed, modular, stable
                PluginDescriptor.DeploymentTarget.ALL);
            Plugin instance = loadPlugin(type, env.settings(), env.configDir());
            loaded.add(new LoadedPlugin(descriptor, instance, type.getClassLoader()));
            infos.add(new PluginRuntimeInfo(descriptor));
        }
        loaded.addAll(super.plugins());
        this.allPlugins = List.copyOf(loaded);
        this.allInfo = new PluginsAndModules(infos, super.info().getModuleInfos());
    }

    @Override
    protected List<LoadedPlugin> plugins() {
        return allPlugins;
    }

    @Override
    public PluginsAndModules info() {
        return allInfo;
    }
}
