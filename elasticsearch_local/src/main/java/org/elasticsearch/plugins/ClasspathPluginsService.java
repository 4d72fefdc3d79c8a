package org.elasticsearch.plugins;

import org.elasticsearch.Build;
import org.elasticsearch.action.admin.cluster.node.info.PluginsAndModules;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.jdk.ModuleQualifiedExportsService;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;

/**
 * A {@link PluginsService} that adds plugins found on the classpath (e.g. Netty4Plugin, which
 * provides the HTTP and transport layers) to whatever the (empty) modules/plugins folders hold.
 *
 * <p>In {@code org.elasticsearch.plugins} because {@code LoadedPlugin} and {@code loadPlugin}
 * are package-private. Plugins listed here show up in {@code GET _nodes/plugins}, which is how
 * callers detect capabilities such as painless.
 */
public final class ClasspathPluginsService extends PluginsService {

    private final List<LoadedPlugin> allPlugins;
    private final PluginsAndModules allInfo;

    public ClasspathPluginsService(Settings settings, Environment env, Collection<Class<? extends Plugin>> classpathPlugins) {
        super(settings, env.configFile(), env.modulesFile(), env.pluginsFile());
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
                false, false, false, false);
            loaded.add(new LoadedPlugin(descriptor, loadPlugin(type, settings, env.configFile())));
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

    @Override
    protected void addServerExportsService(Map<String, List<ModuleQualifiedExportsService>> qualifiedExports) {
        // Classpath mode: there is no server module layer to export from.
    }
}
